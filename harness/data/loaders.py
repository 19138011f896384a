"""FFCV loaders: the two-view pretraining loader, the labelled training loader, the eval loader.

The two-view loader decodes each stored image once and takes both views' random-resized crops
from it (ffcv_two_view: one pipeline whose samples are 2 x H x W x 3, crops seeded); with
decode="per_view" it runs FFCV's own decoder once per view instead (two pipelines, two decodes,
crops from numba's unseeded generator). Either way the crops happen in the decoder on FFCV's
threads, the seeded flip right after (ffcv_flip). The
photometric augmentations run where they cost least: on a GPU as batched tensor ops after the uint8 batch's transfer (augment.BatchAugment), which leaves
FFCV's CPU threads to decoding; on the CPU inside the FFCV pipeline as numba kernels on those
threads (ffcv_augment.PhotometricAugment), several times faster there than eager tensor ops in
the training thread (benchmarks/loader.py). `photometric=` overrides the choice. Under a
torch process group, every rank reads its own shard.

Every loader, on either path, normalises with the channel mean and std that `harness prep`
measured on its data set's training images: `dataset_normalization` reads them from the
manifest.json beside the .beton, the one place that decides.

A loader that will decode few images runs FFCV's pipeline without compiling it: FFCV's own
pure-Python mode (its Compiler disabled while the Loader is built, which is when FFCV
compiles), in which the decoding and resizing still run in FFCV's C code and our operations'
kernels stay compiled (numba's disk cache); only the per-image glue runs as Python. That skips
the pipeline's compile, 1.3-2.5 s of CPU per loader and process at 32 px on a 2-core EPYC, for
0.02-0.05 ms more per image:
`interpreted` takes it where a loader with one decoding thread (where Python loses no
parallelism) decodes at most INTERPRET_UP_TO images in its life (its shard times its passes),
below where the two costs meet (benchmarks/loader_startup.py). Which loaders: the eval loader
(no random draws), the one-decode two-view loader and the labelled loader (their crops seeded
per sample: the same batches either way, tests/data/test_loaders.py; uncompiled, the
per-sample reseeding goes to numpy's global generator, which nothing else in the harness draws
from); FFCV's own random-resized-crop decoder draws from numba's unseeded generator when
compiled and from numpy's global one when not, so the per-view two-view loader built on it
always compiles.
"""

import os
import queue
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.distributed as dist

# Importing ffcv sets torch to one thread (its Compiler's default); keep torch's own count.
_TORCH_THREADS = torch.get_num_threads()
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline import PipelineSpec
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from .augment import BatchAugment, ViewAugment, normalize
from .cpu_input import InputBuffers, normalized_input
from .ffcv_augment import PhotometricAugment
from .ffcv_flip import HorizontalFlip
from .ffcv_reader import install as _install_cached_reader
from .ffcv_two_view import (SeededCropDecoder, TwoViewCropDecoder, TwoViewFlip,
                            TwoViewPhotometric)
from .prepared import Normalization, beton_path, dataset_normalization

# Every loader's sample reader from numba's disk cache, not compiled per loader (ffcv_reader).
_install_cached_reader()

torch.set_num_threads(_TORCH_THREADS)


def _quiet_numba_finalizer(unraisable, _previous=sys.unraisablehook) -> None:
    """Drop one known harmless message: when an FFCV pipeline is garbage-collected, numba's
    Dispatcher finalizer can raise KeyError over overloads it already removed, which Python
    prints as "Exception ignored in: <finalize object ...>" with a traceback (every evaluation
    prints several). Everything else goes to the previous hook."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if (isinstance(unraisable.exc_value, KeyError) and tb is not None
            and tb.tb_frame.f_code.co_filename.endswith(os.path.join("numba", "core", "dispatcher.py"))):
        return
    _previous(unraisable)


sys.unraisablehook = _quiet_numba_finalizer

__all__ = [
    "TwoViewBatch", "TwoViewLoader", "LabelledLoader", "two_view_loader", "labelled_loader",
    "eval_loader", "default_center_crop_ratio", "beton_path", "photometric_path",
    "Normalization", "dataset_normalization",
]

PHOTOMETRIC = ("auto", "ffcv", "torch")
DECODE = ("once", "per_view")


class TwoViewBatch(NamedTuple):
    view_a: torch.Tensor
    view_b: torch.Tensor
    label: torch.Tensor


def default_center_crop_ratio(resolution: int) -> float:
    """Resize-256 / crop-224 at ImageNet scale; small images (CIFAR, Tiny) are used whole."""
    return 1.0 if resolution <= 64 else 224 / 256


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(device)


def photometric_path(choice: str, device: torch.device) -> str:
    """Where the photometric augmentations run: 'ffcv' (numba, inside FFCV's pipeline) or
    'torch' (batched tensor ops after the transfer); 'auto' is 'torch' on a GPU, else 'ffcv'."""
    if choice not in PHOTOMETRIC:
        raise ValueError(f"photometric={choice!r}: choose one of {', '.join(PHOTOMETRIC)}")
    if choice == "auto":
        return "torch" if device.type == "cuda" else "ffcv"
    return choice


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class _LoaderSpec:
    """What every loader here shares; the FFCV Loader is built from it."""

    path: Path
    batch_size: int
    resolution: int
    device: torch.device
    num_workers: int
    seed: int
    indices: Sequence[int] | None
    stats: Normalization = field(init=False)  # read from the manifest, before any compile

    def __post_init__(self):
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"FFCV file {self.path} does not exist: run `harness prep`")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.resolution < 8:
            raise ValueError(f"resolution={self.resolution} is too small (>= 8 px)")
        object.__setattr__(self, "stats", dataset_normalization(self.path))  # frozen

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """A float batch in [0, 1] standardised with the data set's statistics, in place."""
        return normalize(images, self.stats.mean, self.stats.std)

    def normalized(self, images: torch.Tensor, buffers: InputBuffers) -> torch.Tensor:
        """The network's input from a uint8 batch as FFCV leaves it: a float tensor that
        aliases nothing of FFCV's, standardised. On the CPU in one pass into one of the
        loader's `buffers` that nothing refers to any more (cpu_input); on a GPU torch ops."""
        if images.is_cuda:
            return self.normalize(_to_float(images))
        return normalized_input(images, self.stats.mean, self.stats.std, buffers)

    def stream_seed(self, stream: int) -> np.random.SeedSequence:
        """The seed of one random stream (a view's flips, the crops) of this loader and rank."""
        return np.random.SeedSequence([self.seed, _world()[0], stream])

    def image_pipeline(self, decoder, flip_p: float | None, augment=None, stream: int = 0) -> list:
        """decoder, flip (seeded by the loader's seed, rank and `stream`: one per view), the
        FFCV `augment` operation if any, then to a torch batch on the device."""
        ops = [decoder]
        if flip_p:
            ops.append(HorizontalFlip(flip_p, self.stream_seed(stream)))
        if augment is not None:
            ops.append(augment)  # an FFCV operation on the uint8 images, before ToTensor
        on_gpu = self.device.type == "cuda"
        ops += [ToTensor(), ToDevice(self.device, non_blocking=on_gpu), ToTorchImage(channels_last=on_gpu)]
        return ops

    def label_pipeline(self) -> list:
        return [IntDecoder(), ToTensor(), Squeeze(), ToDevice(self.device, non_blocking=True)]

    def images(self, distributed: bool) -> int:
        """How many images one pass of this loader decodes on this rank."""
        if self.indices is not None:
            count = len(self.indices)
        else:
            from ffcv.reader import Reader
            count = int(Reader(str(self.path)).num_samples)
        return -(-count // _world()[1]) if distributed else count

    def build(self, pipelines: dict, *, order: OrderOption, distributed: bool,
              drop_last: bool, interpret: bool = False) -> Loader:
        """The FFCV Loader; interpret: in FFCV's pure-Python mode (module docstring)."""
        threads = torch.get_num_threads()
        compiling = Compiler.is_enabled
        Compiler.set_enabled(compiling and not interpret)
        try:
            loader = Loader(str(self.path), batch_size=self.batch_size,
                            num_workers=self.num_workers, order=order, distributed=distributed,
                            seed=self.seed, indices=self.indices, pipelines=pipelines,
                            drop_last=drop_last, os_cache=True)
        finally:
            Compiler.set_enabled(compiling)
        # FFCV sets torch's thread count to its worker count; the training step needs its own.
        torch.set_num_threads(threads)
        return loader


# Up to this many images decoded in a loader's life, its pipeline runs uncompiled (module
# docstring): under a third of where the compile starts to pay (benchmarks/loader_startup.py,
# 2-core EPYC, 32 px: the two-view pipeline's 2.1-2.5 s of compile against 0.05 ms more per
# image, about 46,000-49,000 images; the eval loader's 1.3 s against 0.02 ms, about 63,000).
INTERPRET_UP_TO = 15_000


def interpreted(spec: _LoaderSpec, passes: int | None, distributed: bool) -> bool:
    """Whether a loader of `spec` that runs `passes` epochs (None: unknown) skips its compile."""
    return (passes is not None and spec.num_workers == 1
            and passes * spec.images(distributed) <= INTERPRET_UP_TO)


def _epoch(loader: Loader):
    """One epoch of FFCV batches, keeping torch's thread count, stopping FFCV's thread on exit."""
    # Loader.__iter__ calls Compiler.set_num_threads(num_workers), which also sets torch's
    # thread count, every epoch: the training step would run on the loader's thread count.
    threads = torch.get_num_threads()
    iterator = iter(loader)
    torch.set_num_threads(threads)
    try:
        yield from iterator
    finally:
        _stop(iterator)


def _stop(iterator) -> None:
    """Stop an FFCV epoch's thread now, also when its consumer left the loop early.

    Left alone, the thread runs batches ahead into whatever comes next and then blocks for
    good on its full queue (EpochIterator's final put has no timeout), holding its buffers.
    So: no more batches to start (ffcv 1.0.2's iter_ixes), drain the queue until it exits.
    At most the batch in progress is finished.
    """
    iterator.terminate_event.set()
    iterator.iter_ixes = iter(())
    while iterator.is_alive():
        try:
            iterator.output_queue.get(timeout=0.05)
        except queue.Empty:
            pass
    iterator.close()


def _to_float(images: torch.Tensor) -> torch.Tensor:
    # A new tensor: FFCV recycles its output buffers a few batches later, so nothing handed
    # to the caller may alias them (labels are cloned for the same reason). Channels-last in
    # memory on a GPU (tensor cores), NCHW on the CPU, whatever the strides of `images`.
    layout = torch.channels_last if images.is_cuda else torch.contiguous_format
    return images.to(torch.float32, memory_format=layout).div_(255.0)


class TwoViewLoader:
    """Yields TwoViewBatch(view_a, view_b, label): two augmented, normalised views per image.

    `photometric` is where colour jitter, grayscale, blur and solarization run ('ffcv' or
    'torch', see photometric_path); `augment` holds the two views' augmenters (PhotometricAugment
    operations inside the FFCV pipelines, or BatchAugment modules applied here), each with a
    seeded torch `generator`. `decode`: 'once' (both crops from one decode, seeded) or
    'per_view' (FFCV's decoder per view; its crops draw from numba's unseeded generator).
    Flips are seeded either way (view a's and view b's streams are the same on both paths).
    Training shards come from FFCV's distributed sampler: a new global shuffle every epoch,
    padded so every rank has the same number of batches (as torch's DistributedSampler).
    """

    def __init__(self, spec: _LoaderSpec, views: tuple[ViewAugment, ViewAugment], *,
                 distributed: bool, drop_last: bool = True, photometric: str = "auto",
                 decode: str = "once", interpret: bool = False):
        if decode not in DECODE:
            raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODE)}")
        self.spec = spec
        self.views = views
        self.decode = decode
        self.photometric = photometric_path(photometric, spec.device)
        rank, _ = _world()
        seeds = [spec.seed * 1000 + 2 * rank + i for i in range(len(views))]
        # The flips' numpy generators, which a trainer re-seeds per epoch (in place); the
        # pipeline builders below fill it, as they fill `augment`.
        self.flip_generators: list[np.random.Generator] = []
        pipelines = {"label": spec.label_pipeline()}
        if decode == "once":
            pipelines["image"] = self._one_decode_pipeline(seeds)
        else:
            pipelines.update(self._per_view_pipelines(seeds))
        self.interpreted = interpret
        self.loader = spec.build(pipelines, order=OrderOption.RANDOM, distributed=distributed,
                                 drop_last=drop_last, interpret=interpret)

    def _one_decode_pipeline(self, seeds: list[int]) -> PipelineSpec:
        spec, (a, b) = self.spec, self.views
        size = (spec.resolution, spec.resolution)
        # Stream 2: the crops (0 and 1 are the views' flips, as on the per-view path).
        crop_seed = int(spec.stream_seed(2).generate_state(1, np.uint64)[0])
        decoder = TwoViewCropDecoder(size, (a.crop_scale, b.crop_scale),
                                     (a.crop_ratio, b.crop_ratio), seed=crop_seed)
        ops = []
        if a.flip_p or b.flip_p:
            flip = TwoViewFlip((a.flip_p, b.flip_p), (spec.stream_seed(0), spec.stream_seed(1)))
            self.flip_generators = flip.generators
            ops.append(flip)
        if self.photometric == "ffcv":
            photometric = TwoViewPhotometric(self.views, spec.resolution, seeds)
            self.augment = list(photometric.views)
            ops.append(photometric)
        else:
            self.augment = [BatchAugment(v, spec.resolution, seed=s)
                            for v, s in zip(self.views, seeds)]
        # The N x 2 x H x W x 3 uint8 batch; uint8_batches splits the views.
        ops += [ToTensor(), ToDevice(spec.device, non_blocking=spec.device.type == "cuda")]
        return PipelineSpec("image", decoder=decoder, transforms=ops)

    def _per_view_pipelines(self, seeds: list[int]) -> dict:
        spec = self.spec
        kind = PhotometricAugment if self.photometric == "ffcv" else BatchAugment
        self.augment = [kind(view, spec.resolution, seed=s) for view, s in zip(self.views, seeds)]
        pipelines = {}
        for stream, (name, view, augment) in enumerate(zip(("image", "image_b"), self.views,
                                                           self.augment)):
            decoder = RandomResizedCropRGBImageDecoder(
                (spec.resolution, spec.resolution), scale=view.crop_scale, ratio=view.crop_ratio)
            in_ffcv = augment if self.photometric == "ffcv" else None
            transforms = spec.image_pipeline(decoder, view.flip_p, in_ffcv, stream)[1:]
            self.flip_generators += [op.rng for op in transforms if isinstance(op, HorizontalFlip)]
            pipelines[name] = PipelineSpec("image", decoder=decoder, transforms=transforms)
        return pipelines

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[TwoViewBatch]:
        if self.photometric == "torch":
            for view_a, view_b, label in self.raw_batches():
                yield TwoViewBatch(self.spec.normalize(view_a), self.spec.normalize(view_b),
                                   label)
            return
        normalized, buffers = self.spec.normalized, InputBuffers()
        for image_a, image_b, label in self.uint8_batches():
            yield TwoViewBatch(normalized(image_a, buffers), normalized(image_b, buffers),
                               label.clone())

    def raw_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(view_a, view_b, label) as augmented floats in [0, 1], before normalisation (for grids)."""
        for image_a, image_b, label in self.uint8_batches():
            view_a, view_b = _to_float(image_a), _to_float(image_b)
            if self.photometric == "torch":
                view_a, view_b = self.augment[0](view_a), self.augment[1](view_b)
            yield view_a, view_b, label.clone()

    def uint8_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(view_a, view_b, label) as FFCV leaves them: uint8 N x 3 x H x W views, aliasing
        FFCV's buffers (which it reuses a few batches later); on the one-decode path strided
        views of the N x 2 x H x W x 3 batch."""
        if self.decode == "per_view":
            # Fields first (image, label), then image_b.
            for image_a, label, image_b in _epoch(self.loader):
                yield image_a, image_b, label
            return
        for both, label in _epoch(self.loader):
            views = both.permute(1, 0, 4, 2, 3)  # 2 x N x 3 x H x W, no copy
            yield views[0], views[1], label


class LabelledLoader:
    """Yields (images, labels), normalised: the linear-evaluation training and the eval loaders."""

    def __init__(self, spec: _LoaderSpec, loader: Loader, interpreted: bool = False):
        self.spec, self.loader = spec, loader
        self.interpreted = interpreted  # built uncompiled (`interpreted`)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        buffers = InputBuffers()
        for images, labels in _epoch(self.loader):
            yield self.spec.normalized(images, buffers), labels.clone()


def two_view_loader(path, *, batch_size: int, resolution: int,
                    views: tuple[ViewAugment, ViewAugment], device=None, num_workers: int = 2,
                    seed: int = 0, indices: Sequence[int] | None = None,
                    distributed: bool | None = None, drop_last: bool = True,
                    photometric: str = "auto", decode: str = "once",
                    passes: int | None = None) -> TwoViewLoader:
    """The pretraining loader. distributed=None means: shard when a process group is running;
    photometric: 'auto' (numba in FFCV on the CPU, batched tensor ops on a GPU), 'ffcv', 'torch';
    decode: 'once' (one JPEG decode, both crops from it) or 'per_view' (FFCV's decoder per view);
    passes: the epochs it will run, if known (a short life skips the compile: `interpreted`)."""
    spec = _LoaderSpec(Path(path), batch_size, resolution, _device(device), num_workers, seed, indices)
    if distributed is None:
        distributed = _world()[1] > 1
    return TwoViewLoader(spec, views, distributed=distributed, drop_last=drop_last,
                         photometric=photometric, decode=decode,
                         interpret=decode == "once" and interpreted(spec, passes, distributed))


def labelled_loader(path, *, batch_size: int, resolution: int, device=None, num_workers: int = 2,
                    seed: int = 0, indices: Sequence[int] | None = None,
                    distributed: bool | None = None,
                    crop_scale: tuple[float, float] = (0.08, 1.0),
                    drop_last: bool = False, passes: int | None = None) -> LabelledLoader:
    """Labelled training with random-resized crop + flip (linear probe, fine-tuning): every
    image every epoch, the last batch smaller (drop_last=False), unless drop_last. The crops
    (FFCV's draws, seeded per sample: SeededCropDecoder) and flips repeat with `seed`.
    passes: the epochs it will run, if known (a short life skips the compile: `interpreted`)."""
    spec = _LoaderSpec(Path(path), batch_size, resolution, _device(device), num_workers, seed, indices)
    if distributed is None:
        distributed = _world()[1] > 1
    # Stream 2: the crops (0 is the flips', as in the two-view loader).
    decoder = SeededCropDecoder((resolution, resolution), scale=crop_scale,
                                seed=int(spec.stream_seed(2).generate_state(1, np.uint64)[0]))
    # A PipelineSpec names the decoder: FFCV takes a list's first op as one only if it is of
    # the field's own decoder class.
    image = PipelineSpec("image", decoder=decoder,
                         transforms=spec.image_pipeline(decoder, 0.5)[1:])
    pipelines = {"image": image, "label": spec.label_pipeline()}
    interpret = interpreted(spec, passes, distributed)
    return LabelledLoader(spec, spec.build(pipelines, order=OrderOption.RANDOM,
                                           distributed=distributed, drop_last=drop_last,
                                           interpret=interpret), interpret)


def eval_loader(path, *, batch_size: int, resolution: int, device=None, num_workers: int = 2,
                indices: Sequence[int] | None = None, distributed: bool | None = None,
                center_crop_ratio: float | None = None,
                passes: int | None = None) -> LabelledLoader:
    """Centre crop, no augmentation, every image exactly once. passes: the epochs it will
    run, if known (a short life skips the compile: `interpreted`).

    Distributed evaluation shards by hand (rank r takes every world_size-th image) rather
    than with FFCV's sampler, which pads the last batch with repeats and would count some
    images twice.
    """
    ratio = default_center_crop_ratio(resolution) if center_crop_ratio is None else center_crop_ratio
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"center_crop_ratio={ratio} must lie in (0, 1]")
    if distributed is None:
        distributed = _world()[1] > 1
    if distributed:
        rank, world = _world()
        if indices is None:
            from ffcv.reader import Reader
            # num_samples is a numpy uint64, and np.arange of one is float64 under numpy 2:
            # float indices make FFCV's numba decoder fail in its thread (the loop then hangs).
            indices = np.arange(int(Reader(str(path)).num_samples))
        indices = np.asarray(indices)[rank::world]
    spec = _LoaderSpec(Path(path), batch_size, resolution, _device(device), num_workers, 0, indices)
    decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=ratio)
    pipelines = {"image": spec.image_pipeline(decoder, None), "label": spec.label_pipeline()}
    interpret = interpreted(spec, passes, False)
    return LabelledLoader(spec, spec.build(pipelines, order=OrderOption.SEQUENTIAL,
                                           distributed=False, drop_last=False,
                                           interpret=interpret), interpret)
