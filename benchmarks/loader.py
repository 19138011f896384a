"""Loader benchmark: the FFCV two-view loader's decode and photometric paths against torchvision.

Six loaders make the same two Barlow Twins views with the same worker count and batch size:
  - torchvision: ImageFolder + DataLoader, PIL transforms per image in worker processes;
  - FFCV + numba: the photometric augmentations as numba kernels inside FFCV's pipeline,
    on its threads (photometric="ffcv", the CPU default), each image decoded once for both
    views (decode="once", the default);
  - the same, per view: FFCV's decoder once per view (decode="per_view", two decodes);
  - the same, as issue 13 found it: per view, the photometric kernels of --as-found (a
    revision; loaded from git into a module of their own), and the uint8 batches to the
    network's input as torch ops (a strided copy into float, / 255, - mean, / std:
    `raw_batches` and `normalize`), where the loader now does it in one pass into reused
    arrays (cpu_input);
  - FFCV + torch: the augmentations as batched tensor ops after the batch leaves FFCV,
    here on the CPU in the consuming thread (photometric="torch", the GPU default);
  - FFCV decode only, once and per view: decode + crop + flip, uint8, no photometric
    augmentations (the decode stage's own share).
The loaders take turns pass by pass (one warm-up pass each, then --passes timed ones), so
other load on the machine hits all of them alike; each pass starts a fresh epoch and stops it
(workers, FFCV's thread) outside the timed region. Reported: the median images/s (pairs of
views) ± half the range. Compile time is reported apart: numba's first compile of the
photometric kernels (into an empty cache: later processes load them from disk), and each FFCV
loader's first batch (its pipeline compile). Run from the repository root:

    .venv/bin/python benchmarks/loader.py [--datasets ../shared/datasets] [--passes 3]
"""

import argparse
import atexit
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

# An empty numba cache, so the kernels' compile time below is what a first run pays.
_NUMBA_CACHE = tempfile.mkdtemp(prefix="bt-loader-bench-numba-")
atexit.register(shutil.rmtree, _NUMBA_CACHE, ignore_errors=True)
os.environ["NUMBA_CACHE_DIR"] = _NUMBA_CACHE

import numpy as np  # noqa: E402

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from data_prep import prepare  # noqa: E402
from environment import load_average, machine, revision, versions  # noqa: E402
import harness.data.loaders  # noqa: E402
from harness.data import (CIFAR_VIEWS, IMAGENET_VIEWS, Normalization, ViewAugment,  # noqa: E402
                          dataset_normalization, two_view_loader)
from harness.data.augment import blur_kernel_size  # noqa: E402
from harness.data.ffcv_augment import NO_OP, augment_batch  # noqa: E402

LOADERS = ("torchvision", "ffcv_numba", "ffcv_numba_per_view", "ffcv_numba_as_before",
           "ffcv_torch", "ffcv_decode", "ffcv_decode_per_view")


def torchvision_view(view: ViewAugment, resolution: int, stats: Normalization) -> T.Compose:
    ops = [T.RandomResizedCrop(resolution, scale=view.crop_scale, ratio=view.crop_ratio,
                               antialias=True),
           T.RandomHorizontalFlip(view.flip_p),
           T.RandomApply([T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                         p=view.jitter_p),
           T.RandomGrayscale(view.grayscale_p)]
    if view.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(resolution), view.blur_sigma)],
                                 p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=view.solarize_p))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(stats.mean, stats.std)])


class TwoViews:
    def __init__(self, views, resolution, stats: Normalization):
        self.a, self.b = (torchvision_view(v, resolution, stats) for v in views)

    def __call__(self, image):
        return self.a(image), self.b(image)


def torchvision_pairs(loader: DataLoader):
    iterator = iter(loader)
    try:
        for (view_a, view_b), _ in iterator:
            yield view_a, view_b
    finally:
        # Stop the workers now: left to the garbage collector, they would go on with their
        # prefetched batches while the next loader is timed.
        iterator._shutdown_workers()


def kernels_at(revision: str, folder: Path):
    """harness/data/ffcv_augment.py as it was at `revision`, imported as a module of its own."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{revision}:harness/data/ffcv_augment.py"],
                            cwd=repo, capture_output=True, text=True, check=True).stdout
    path = folder / f"ffcv_augment_{revision}.py"
    path.write_text(source.replace("from .augment import", "from harness.data.augment import"))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_before(loader):
    """The two-view loader's batches as it made them before issue 13: to float, then to the
    data set's statistics, as torch ops (its __iter__ then)."""
    for view_a, view_b, label in loader.raw_batches():
        yield loader.spec.normalize(view_a), loader.spec.normalize(view_b), label


def timed_pass(make_iter, batches: int) -> float:
    """Seconds for `batches` batches of a fresh epoch; the epoch is stopped after the clock."""
    iterator = make_iter()
    start = time.perf_counter()
    for i, _ in enumerate(iterator):
        if i + 1 == batches:
            break
    elapsed = time.perf_counter() - start
    iterator.close()
    return elapsed


def kernel_compile_seconds() -> float:
    """numba's compile of the photometric kernels, on a tiny batch (the cache is empty)."""
    n = 2
    start = time.perf_counter()
    augment_batch(np.zeros((n, 8, 8, 3), np.uint8), np.full((n, 4), NO_OP),
                  np.ones((n, 4), np.float32),
                  np.zeros(n, bool), np.zeros(n, np.float32), np.zeros(n, bool), 3, 2)
    return time.perf_counter() - start


def unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def bench_dataset(name, folder: Path, resolution, views, write_mode, args, work: Path,
                  old_kernels):
    beton_dir = work / f"{name}-{write_mode}"
    prepare(str(folder), beton_dir, write_mode=write_mode, num_workers=args.workers,
            progress=False)
    batches = args.batches_32 if resolution <= 64 else args.batches_224

    first_batch_s, ffcv = {}, {}
    for path, decode in (("ffcv", "once"), ("ffcv", "per_view"), ("torch", "once"),
                         ("torch", "per_view")):
        start = time.perf_counter()
        ffcv[path, decode] = two_view_loader(
            beton_dir / "train.beton", batch_size=args.batch, resolution=resolution, views=views,
            num_workers=args.workers, device="cpu", photometric=path, decode=decode)
        timed_pass(lambda: iter(ffcv[path, decode]), 1)
        first_batch_s[path, decode] = time.perf_counter() - start
    # The loader as issue 13 found it: per view, with the kernels of then.
    with mock.patch.object(harness.data.loaders, "PhotometricAugment",
                           old_kernels.PhotometricAugment):
        ffcv["as found"] = two_view_loader(
            beton_dir / "train.beton", batch_size=args.batch, resolution=resolution, views=views,
            num_workers=args.workers, device="cpu", photometric="ffcv", decode="per_view")
    # Normalised as the FFCV loaders are: with the data set's own statistics.
    two_views = TwoViews(views, resolution, dataset_normalization(beton_dir / "train.beton"))
    tv = DataLoader(ImageFolder(str(folder / "train"), transform=two_views),
                    batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True)
    make_iter = {"torchvision": lambda: torchvision_pairs(tv),
                 "ffcv_numba": lambda: iter(ffcv["ffcv", "once"]),
                 "ffcv_numba_per_view": lambda: iter(ffcv["ffcv", "per_view"]),
                 "ffcv_numba_as_before": lambda: as_before(ffcv["as found"]),
                 "ffcv_torch": lambda: iter(ffcv["torch", "once"]),
                 "ffcv_decode": lambda: ffcv["torch", "once"].uint8_batches(),
                 "ffcv_decode_per_view": lambda: ffcv["torch", "per_view"].uint8_batches()}
    seconds = {k: [] for k in LOADERS}
    for p in range(args.passes + 1):
        order = LOADERS[p % len(LOADERS):] + LOADERS[:p % len(LOADERS)]
        print(f"    pass {p} of {args.passes}{' (warm-up)' if p == 0 else ''}", file=sys.stderr,
              flush=True)
        for k in order:
            seconds[k].append(timed_pass(make_iter[k], batches))
    images = batches * args.batch
    rates = {k: [images / t for t in v[1:]] for k, v in seconds.items()}
    return {"dataset": name, "res": resolution, "mode": write_mode, "images": images,
            "rate": {k: statistics.median(v) for k, v in rates.items()},
            "spread": {k: _spread(v) for k, v in rates.items()},
            "warmup_s": {k: v[0] for k, v in seconds.items()},
            "first_batch_s": first_batch_s}


def _spread(rates: list[float]) -> float:
    return (max(rates) - min(rates)) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--datasets", default=os.environ.get("BT_DATASETS", repo.parent / "shared" / "datasets"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--passes", type=int, default=3, help="timed passes after one warm-up")
    parser.add_argument("--batches-32", type=int, default=40, help="batches per pass at 32 px")
    parser.add_argument("--batches-224", type=int, default=6, help="batches per pass at 224 px")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch's intra-op threads (the batched tensor ops' share)")
    parser.add_argument("--only", choices=("cifar10", "imagenette"), default=None)
    parser.add_argument("--as-found", default="2d738c0",
                        help="the revision whose photometric kernels the loader as issue 13 "
                             "found it runs (those of 2d738c0 and before)")
    args = parser.parse_args()
    # Importing FFCV leaves torch on one thread; a training process sets its own count.
    torch.set_num_threads(args.torch_threads)
    datasets = Path(args.datasets)

    plan = [("cifar10", datasets / "cifar10" / "train.tar.gz", 32, CIFAR_VIEWS, "raw"),
            ("cifar10", datasets / "cifar10" / "train.tar.gz", 32, CIFAR_VIEWS, "jpg"),
            ("imagenette", datasets / "imagenette" / "train.tar.gz", 224, IMAGENET_VIEWS, "jpg")]
    load_before = load_average()
    compile_s = kernel_compile_seconds()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bt-loader-bench-") as tmp:
        old_kernels = kernels_at(args.as_found, Path(tmp))
        folders = {}
        for name, archive, res, views, mode in plan:
            if args.only and name != args.only:
                continue
            if name not in folders:
                folders[name] = unpack(archive, Path(tmp) / name)
            print(f"... {name} {res} px, FFCV {mode} mode", file=sys.stderr, flush=True)
            rows.append(bench_dataset(name, folders[name], res, views, mode, args, Path(tmp),
                                      old_kernels))

    print(f"\nTwo-view loader, images/s (pairs of views), batch {args.batch}, "
          f"{args.workers} workers (FFCV threads / DataLoader processes), torch threads "
          f"{torch.get_num_threads()}; median ± half-range of {args.passes} passes after 1 "
          f"warm-up pass, the loaders taking turns")
    print(f"machine: {machine()}; load average before {load_before}, after {load_average()}")
    print(f"versions: {versions()}; revision {revision()}; the loader as issue 13 found it: "
          f"the photometric kernels of {args.as_found}\n")
    print("| data set | res | FFCV mode | torchvision | FFCV + numba photometric | the same, "
          "decoded per view | the same, as issue 13 found it | FFCV + torch photometric (CPU) "
          "| decode + crop + flip only | the same, decoded per view | numba vs torchvision | "
          "numba vs torch ops | whole loader: one decode vs per view | whole loader: vs as "
          "found | decode stage: one decode vs per view |")
    print("| --- " * 16 + "|")
    for r in rows:
        cells = " | ".join(f"{r['rate'][k]:,.0f} ± {r['spread'][k]:,.0f}" for k in LOADERS)
        rate = r["rate"]
        print(f"| {r['dataset']} | {r['res']} | {r['mode']} | {cells} "
              f"| {rate['ffcv_numba'] / rate['torchvision']:.1f}x "
              f"| {rate['ffcv_numba'] / rate['ffcv_torch']:.1f}x "
              f"| {rate['ffcv_numba'] / rate['ffcv_numba_per_view']:.2f}x "
              f"| {rate['ffcv_numba'] / rate['ffcv_numba_as_before']:.2f}x "
              f"| {rate['ffcv_decode'] / rate['ffcv_decode_per_view']:.2f}x |")
    print(f"\nCompile and warm-up, seconds. numba's first compile of the photometric kernels "
          f"(empty cache; cached on disk after): {compile_s:.1f}")
    print("| data set | res | FFCV mode | first batch: numba once / per view / torch once / "
          "per view | warm-up pass: " + " / ".join(LOADERS) + " |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        warm = " / ".join(f"{r['warmup_s'][k]:.1f}" for k in LOADERS)
        first = " / ".join(f"{t:.1f}" for t in r["first_batch_s"].values())
        print(f"| {r['dataset']} | {r['res']} | {r['mode']} | {first} | {warm} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
