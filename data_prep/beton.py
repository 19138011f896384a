"""Write one .beton with ffcv 1.0.2's DatasetWriter, without the ways it can hang.

The writer's main process waits in a loop until its worker processes have reported every sample.
A sample whose decoding raises, a sample larger than a page, a worker killed by the OS, or Ctrl-C
would each leave that loop (or the interpreter's exit) waiting forever. Here every one of them
becomes an exception, and the half-written file is left for the caller to delete.
"""

import functools
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import threading
import time
from contextlib import contextmanager, suppress
from multiprocessing import shared_memory
from pathlib import Path

import ffcv.writer
import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import MAX_PAGE_SIZE, MIN_PAGE_SIZE, DatasetWriter

from . import images
from .errors import PrepError
from .sources import Item


def write_beton(path: Path, items: list[Item], labels: list[int], sizes: list[tuple[int, int]],
                image_field: RGBImageField, num_workers: int, progress: bool):
    """Write fields {'image', 'label'} for `items` in order; `sizes` are their stored (h, w)."""
    error_dir = path.parent / f"{path.stem}.errors"
    error_dir.mkdir()
    writer = DatasetWriter(str(path), {"image": image_field, "label": IntField()},
                           page_size=_page_size(sizes, items), num_workers=num_workers)
    with _supervised(writer, path, progress):
        writer.from_indexed_dataset(_EncodeDataset(items, labels, error_dir))
    failures = sorted(line for f in error_dir.iterdir() for line in f.read_text().splitlines())
    if failures:
        raise PrepError(f"could not encode {len(failures)} image(s) into {path.name}: "
                        f"{'; '.join(failures[:10])}")


class _EncodeDataset:
    """What the writer processes index: (HxWx3 uint8 RGB array, label) per image.

    A sample that raises would hang the writer, so a failure is recorded in `error_dir` and a
    1x1 black placeholder written instead; `write_beton` then raises, and the file holding the
    placeholder is never committed.
    """
    _PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)

    def __init__(self, items: list[Item], labels: list[int], error_dir: Path):
        self.items, self.labels, self.error_dir = items, labels, error_dir

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        try:
            return images.load_rgb(self.items[index].data), self.labels[index]
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            with open(self.error_dir / f"{os.getpid()}.txt", "a") as f:
                f.write(f"{self.items[index].path} ({reason})\n")
            return self._PLACEHOLDER, self.labels[index]


def _page_size(sizes: list[tuple[int, int]], items: list[Item]) -> int:
    """A page that fits the largest sample, and small pages for small files: every writer
    process and the header pad a whole page, and 8 MiB pages would quadruple a CIFAR test split."""
    pixels = [h * w for h, w in sizes]
    largest = int(np.argmax(pixels))
    page = MIN_PAGE_SIZE if 3 * sum(pixels) < 256 * 2**20 else 4 * MIN_PAGE_SIZE  # ffcv's default
    need = 2 * 3 * pixels[largest] + 4096  # twice the raw pixels covers JPEG's worst case too
    while page < need:
        page *= 2
    if page >= MAX_PAGE_SIZE:
        h, w = sizes[largest]
        raise PrepError(f"{items[largest].path} ({w}x{h} px) is too large for an FFCV page: "
                        "pass max_resolution to shrink the images")
    return page


class _WorkerDied(Exception):
    """A writer process exited abnormally (see _supervised)."""


class _CheckedQueue(multiprocessing.queues.Queue):
    """A multiprocessing queue whose blocking get() checks `check` every 0.2 s while it waits."""

    def __init__(self, check, maxsize: int = 0, *, ctx):
        super().__init__(maxsize, ctx=ctx)
        self._check = check

    def __setstate__(self, state):  # a spawned worker's copy: nothing of the parent to check
        super().__setstate__(state)
        self._check = lambda: None

    def get(self, block: bool = True, timeout: float | None = None):
        if not block or timeout is not None:
            return super().get(block, timeout)
        while True:
            self._check()
            try:
                return super().get(True, 0.2)
            except queue.Empty:
                pass


@contextmanager
def _supervised(writer: DatasetWriter, path: Path, progress: bool):
    """Run the writer with its processes tracked, so none can hang us or outlive a failure.

    ffcv.writer builds its bar, worker processes and queues and waits from its module globals
    `tqdm`, `Process`, `Queue` and `sleep`; for this call they are swapped for a configured bar
    (progress=False is really silent), a Process that is remembered, and a queue read and a
    sleep that first check the workers: the writer's two waits (its poll of the samples done,
    its read of each worker's allocation table) end with an error as soon as a worker has
    exited abnormally (e.g. killed for lack of memory), in whatever thread prepare runs. A
    watcher thread also interrupts the main thread's wait with SIGINT, for any wait of ffcv's
    that is not one of those two, when prepare runs in the main thread as the CLI does. On any
    failure, Ctrl-C included, the workers are stopped and the writer's queues released: ffcv
    leaves both behind, and they would block exit.
    """
    workers, crashed, finished, lock = [], [], threading.Event(), threading.Lock()
    parent = os.getpid()

    def tracked_process(*args, **kwargs):
        workers.append(multiprocessing.Process(*args, **kwargs))
        return workers[-1]

    def dead_workers() -> list:
        return [p for p in list(workers) if p.exitcode not in (None, 0)]

    def check_workers() -> None:
        """In the writing process: raise _WorkerDied once a worker has exited abnormally."""
        if os.getpid() != parent:  # a worker reading its own queue (forked copies of these)
            return
        dead = dead_workers()
        if dead:
            with lock:
                crashed.extend(p for p in dead if p not in crashed)
                finished.set()  # the watcher stands down: this error is the one raised
            raise _WorkerDied()

    def checked_sleep(seconds: float) -> None:
        check_workers()
        time.sleep(seconds)

    def checked_queue(maxsize: int = 0):
        return _CheckedQueue(check_workers, maxsize, ctx=multiprocessing.get_context())

    def watch(main_thread: int):
        while not finished.wait(0.2):
            dead = dead_workers()
            with lock:
                if dead and not finished.is_set():
                    crashed.extend(dead)
                    # A real signal, unlike _thread.interrupt_main, also ends a blocking read
                    # such as the writer's wait for a dead worker's allocation table.
                    signal.pthread_kill(main_thread, signal.SIGINT)
                    return

    originals = ffcv.writer.Process, ffcv.writer.tqdm, ffcv.writer.Queue, ffcv.writer.sleep
    ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep = \
        tracked_process, checked_queue, checked_sleep
    ffcv.writer.tqdm = functools.partial(originals[1], disable=not progress,
                                         desc=f"write {path.name}", unit="img")
    watcher = threading.Thread(target=watch, args=(threading.get_ident(),), daemon=True)
    # Only the main thread runs signal handlers, and only a Python one turns SIGINT into an
    # exception here (the default would kill the process, an ignored one do nothing).
    if (threading.current_thread() is threading.main_thread()
            and callable(signal.getsignal(signal.SIGINT))):
        watcher.start()
    try:
        yield
    except BaseException as exc:
        with lock:
            finished.set()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)
        tb = exc.__traceback__
        while tb is not None:  # the queues are locals of DatasetWriter._write_common
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, multiprocessing.queues.Queue):
                    value.cancel_join_thread()
            tb = tb.tb_next
        if isinstance(getattr(writer, "metadata_sm", None), shared_memory.SharedMemory):
            writer.metadata_sm.close()
            with suppress(FileNotFoundError):
                writer.metadata_sm.unlink()
        if crashed and isinstance(exc, (KeyboardInterrupt, _WorkerDied)):
            codes = ", ".join(str(p.exitcode) for p in crashed)
            raise PrepError(f"an FFCV writer process died (exit code {codes}) while writing "
                            f"{path.name}, e.g. killed for lack of memory: retry with fewer "
                            "num_workers or a smaller max_resolution") from None
        raise
    finally:
        (ffcv.writer.Process, ffcv.writer.tqdm, ffcv.writer.Queue,
         ffcv.writer.sleep) = originals
        with lock:
            finished.set()
        if watcher.is_alive():
            watcher.join()
