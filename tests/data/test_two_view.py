"""The one-decode two-view path (harness.data.ffcv_two_view) against FFCV's own decoder.

Two kinds of data: real CIFAR-10 images through `harness prep` (raw and JPEG), where with a
deterministic crop the new path must give exactly the per-view path's batches, photometric
augmentations, flips and labels included; and an instrument: images whose pixels are their
own coordinates (red = column, green = row, blue = the image's index), from which a crop's
box can be read back, to compare the crop draws' distribution with FFCV's decoder. Every
rank's shard is the same on both paths: test_loaders' distributed test.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline import PipelineSpec
from ffcv.writer import DatasetWriter

from data_prep import prepare
from harness.data import CIFAR_VIEWS, two_view_loader
from harness.data.ffcv_two_view import SeededCropDecoder, TwoViewCropDecoder

pytestmark = pytest.mark.slow

# Coordinate images: H x W with red = column, green = row (both < 256), blue = index % 256.
H, W, N, OUT = 120, 200, 256, 32
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def coordinate_beton(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("coords") / "coords.beton"
    rows, cols = np.mgrid[0:H, 0:W]

    class Images:
        def __len__(self):
            return N

        def __getitem__(self, i):
            image = np.stack([cols, rows, np.full_like(cols, i % 256)], axis=2).astype(np.uint8)
            return image, i

    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset(Images())
    return path


def _loader(path, image_pipeline, seed=0, workers=1) -> Loader:
    label = [IntDecoder()]
    return Loader(str(path), batch_size=64, num_workers=workers, order=OrderOption.RANDOM,
                  seed=seed, pipelines={**image_pipeline, "label": label}, drop_last=False)


def _epochs(loader, epochs=1):
    """Every sample of `epochs` epochs as (images, labels): images N x ... uint8, copied."""
    images, labels = [], []
    for _ in range(epochs):
        for batch in loader:
            images.append([np.array(b) for b in batch[:-1]])
            labels.append(np.array(batch[-1]).reshape(-1))
    return [np.concatenate(parts) for parts in zip(*images)], np.concatenate(labels)


def _boxes(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(area fraction, aspect ratio w / h) of each crop, read off its corner pixels.

    Column j's red value is the source column it came from (averaged over the crop's share
    of the source under INTER_AREA): first to last column spans w - w / OUT source columns.
    """
    r, g = views[..., 0].astype(float), views[..., 1].astype(float)
    w = (r[:, :, -1].mean(1) - r[:, :, 0].mean(1)) * OUT / (OUT - 1) + 1
    h = (g[:, -1, :].mean(1) - g[:, 0, :].mean(1)) * OUT / (OUT - 1) + 1
    return w * h / (H * W), w / h


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: sup |F_a - F_b| over both samples' values."""
    grid = np.concatenate([a, b])
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _ffcv_crops(path, scale=SCALE, epochs=2) -> np.ndarray:
    decoder = RandomResizedCropRGBImageDecoder((OUT, OUT), scale=scale, ratio=RATIO)
    (images,), _ = _epochs(_loader(path, {"image": PipelineSpec("image", decoder=decoder)}),
                           epochs)
    return images


def _two_view_crops(path, seed=0, workers=1, epochs=2):
    decoder = TwoViewCropDecoder((OUT, OUT), (SCALE, SCALE), (RATIO, RATIO), seed=seed)
    (images,), labels = _epochs(_loader(path, {"image": PipelineSpec("image", decoder=decoder)},
                                        workers=workers), epochs)
    return images, labels  # images: M x 2 x OUT x OUT x 3


def test_crops_draw_as_ffcvs_decoder_does_each_view_independently(coordinate_beton):
    ours, labels = _two_view_crops(coordinate_beton)
    assert ours.shape == (2 * N, 2, OUT, OUT, 3)
    # Labels line up: each view of sample k shows image labels[k] (its blue channel).
    assert (ours[..., 2] == (labels % 256)[:, None, None, None]).all()
    area_a, ratio_a = _boxes(ours[:, 0])
    area_b, ratio_b = _boxes(ours[:, 1])
    ffcv_area, ffcv_ratio = _boxes(_ffcv_crops(coordinate_beton))
    # 512 draws a side: the KS statistic's 0.1% critical value is 1.95 * sqrt(2 / 512) = 0.12.
    for area, ratio in ((area_a, ratio_a), (area_b, ratio_b)):
        assert _ks(area, ffcv_area) < 0.12 and _ks(np.log(ratio), np.log(ffcv_ratio)) < 0.12
    # The test can tell distributions apart: FFCV's crops with scale (0.3, 1) are far off.
    narrow, _ = _boxes(_ffcv_crops(coordinate_beton, scale=(0.3, 1.0)))
    assert _ks(area_a, narrow) > 0.2
    # The two views are independent draws: no correlation, and different boxes.
    assert abs(np.corrcoef(area_a, area_b)[0, 1]) < 0.15
    assert abs(np.corrcoef(np.log(ratio_a), np.log(ratio_b))[0, 1]) < 0.15
    assert (np.abs(area_a - area_b) > 0.01).mean() > 0.9


def _seeded_crops(path, seed=0, workers=1, epochs=2, compiled=True):
    from ffcv.pipeline.compiler import Compiler

    decoder = SeededCropDecoder((OUT, OUT), scale=SCALE, ratio=RATIO, seed=seed)
    Compiler.set_enabled(compiled)  # FFCV compiles while the Loader is built
    try:
        loader = _loader(path, {"image": PipelineSpec("image", decoder=decoder)}, workers=workers)
    finally:
        Compiler.set_enabled(True)
    (images,), labels = _epochs(loader, epochs)
    return images, labels  # images: M x OUT x OUT x 3


def test_the_labelled_loaders_seeded_crops_draw_as_ffcvs_and_repeat_with_their_seed(
        coordinate_beton):
    """SeededCropDecoder (the labelled loader's): one crop per image with FFCV's draws,
    seeded per sample: FFCV's distribution, the same crops for one seed whatever the threads
    and compiled or not, other crops for another seed and in another epoch."""
    ours, labels = _seeded_crops(coordinate_beton)
    assert ours.shape == (2 * N, OUT, OUT, 3)
    assert (ours[..., 2] == (labels % 256)[:, None, None]).all()  # labels line up
    area, ratio = _boxes(ours)
    ffcv_area, ffcv_ratio = _boxes(_ffcv_crops(coordinate_beton))
    assert _ks(area, ffcv_area) < 0.12 and _ks(np.log(ratio), np.log(ffcv_ratio)) < 0.12
    for same in (_seeded_crops(coordinate_beton, workers=2),
                 _seeded_crops(coordinate_beton, compiled=False)):
        assert np.array_equal(same[1], labels) and np.array_equal(same[0], ours)
    other, other_labels = _seeded_crops(coordinate_beton, seed=1, epochs=1)
    first = _boxes(ours[:N][np.argsort(labels[:N])])[0]
    assert (np.abs(_boxes(other[np.argsort(other_labels)])[0] - first) > 0.01).mean() > 0.9
    second = _boxes(ours[N:][np.argsort(labels[N:])])[0]
    assert (np.abs(first - second) > 0.01).mean() > 0.9


def test_crops_repeat_with_their_seed_whatever_the_threads(coordinate_beton):
    one, labels_one = _two_view_crops(coordinate_beton, seed=5, workers=1)
    two, labels_two = _two_view_crops(coordinate_beton, seed=5, workers=2)
    assert np.array_equal(labels_one, labels_two) and np.array_equal(one, two)
    other, _ = _two_view_crops(coordinate_beton, seed=6, workers=1)
    assert (np.abs(_boxes(other[:, 0])[0] - _boxes(one[:, 0])[0]) > 0.01).mean() > 0.9
    # Each epoch draws new crops (an image lands in another batch, at another place).
    first = _boxes(one[:N][np.argsort(labels_one[:N]), 0])[0]
    second = _boxes(one[N:][np.argsort(labels_one[N:]), 0])[0]
    assert (np.abs(first - second) > 0.01).mean() > 0.9


def test_an_epoch_re_seeded_as_a_resumed_run_does_repeats_its_data(cifar_prepared):
    """The trainer's _seed_epoch makes epoch k's batches a function of (seed, rank, k): the
    order, the crops (which follow it), the flips and the photometric draws, whatever the
    loader drew before. That is what lets a resumed run see an uninterrupted run's data."""
    from harness.pretrain.worker import _seed_epoch

    loader = two_view_loader(cifar_prepared / "train.beton", batch_size=50, resolution=32,
                             views=CIFAR_VIEWS, num_workers=2, device="cpu", seed=4)
    assert len(loader.flip_generators) == 2

    def first_batch(epoch):
        _seed_epoch(loader, 4, 0, epoch)
        batches = loader.raw_batches()
        batch = [t.clone() for t in next(batches)]
        batches.close()
        return batch

    first = first_batch(1)
    other = first_batch(2)  # the run goes on: every generator has moved
    again = first_batch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


@pytest.fixture(scope="module")
def cifar_jpg(cifar_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar_jpg")
    prepare(str(cifar_folder), out, write_mode="jpg", num_workers=2, progress=False)
    return out


# With the crop fixed (the whole image), both paths must give the same batches bit for bit: the
# same decode, the same flips and photometric draws (the same seeded streams per view), labels.
WHOLE = replace(CIFAR_VIEWS[0], crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
WHOLE_VIEWS = (WHOLE, replace(CIFAR_VIEWS[1], crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)))


@pytest.mark.parametrize("stored, photometric", [("raw", "ffcv"), ("jpg", "torch")])
def test_one_decode_gives_the_per_view_batches_when_the_crop_is_fixed(
        stored, photometric, cifar_prepared, cifar_jpg):
    beton = {"raw": cifar_prepared, "jpg": cifar_jpg}[stored] / "train.beton"
    batches = {}
    for decode in ("once", "per_view"):
        loader = two_view_loader(beton, batch_size=50, resolution=32, views=WHOLE_VIEWS, seed=3,
                                 num_workers=2, device="cpu", photometric=photometric,
                                 decode=decode)
        batches[decode] = [[t.clone() for t in b] for _, b in zip(range(3), loader.raw_batches())]
    for once, per_view in zip(batches["once"], batches["per_view"]):
        for a, b in zip(once, per_view):
            assert a.shape == b.shape and a.stride() == b.stride()
            assert torch.equal(a, b)
    view_a, view_b, _ = batches["once"][0]
    assert (view_a - view_b).abs().flatten(1).mean(1).gt(0.01).float().mean() > 0.9
