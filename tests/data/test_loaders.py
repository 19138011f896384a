"""The FFCV loaders on real CIFAR-10 and Imagenette subsets written by `harness prep`.

Every FFCV loader compiles its numba pipeline (about 10-15 s on this machine), so the module
builds each kind of loader once and the tests share them.
"""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from harness.cli import main as cli_main
from ffcv.loader.epoch_iterator import EpochIterator

from data_prep import PrepError, fit_part, prepare, read_manifest
from harness.data import (CIFAR_VIEWS, ViewAugment, dataset_normalization, eval_loader,
                          labelled_loader, two_view_loader)
from harness.data.ffcv_augment import PhotometricAugment
from harness.data.ffcv_flip import flip_batch
from harness.data.loaders import photometric_path

# ImageNet's constants, the usual convention: what the loaders used before statistics per set.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_images(cifar_folder, cifar_prepared):
    """Source pixels and labels of the test split, in the order prep stored them."""
    classes = json.loads((cifar_prepared / "manifest.json").read_text())["classes"]
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((cifar_folder / "test" / cls).iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def stats(cifar_prepared):
    return dataset_normalization(cifar_prepared / "train.beton")


def _unnormalise(x: torch.Tensor, stats) -> torch.Tensor:
    mean = torch.tensor(stats.mean).view(1, 3, 1, 1)
    std = torch.tensor(stats.std).view(1, 3, 1, 1)
    return x * std + mean


@pytest.fixture(scope="module")
def two_view_batches(cifar_prepared):
    loader = two_view_loader(cifar_prepared / "train.beton", batch_size=64, resolution=32,
                             views=CIFAR_VIEWS, num_workers=2, device="cpu", seed=1)
    return [batch for _, batch in zip(range(3), loader)]


def test_two_views_shape_dtype_range(two_view_batches, stats):
    for view_a, view_b, label in two_view_batches:
        for view in (view_a, view_b):
            assert view.shape == (64, 3, 32, 32) and view.dtype == torch.float32
            pixels = _unnormalise(view, stats)
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert label.shape == (64,) and label.dtype == torch.int64
        assert 0 <= int(label.min()) and int(label.max()) <= 9


def test_two_views_differ_from_each_other(two_view_batches):
    view_a, view_b, _ = two_view_batches[0]
    per_image = (view_a - view_b).abs().flatten(1).mean(1)
    assert (per_image > 0.05).all(), "the two views of an image must be different crops/colours"
    # Batches held by the caller keep their contents (FFCV recycles its own buffers).
    assert not torch.equal(two_view_batches[0].view_a, two_view_batches[1].view_a)


def test_two_views_differ_from_the_source(two_view_batches, cifar_folder, stats):
    view_a = _unnormalise(two_view_batches[0].view_a, stats)
    sources = [np.asarray(Image.open(p).convert("RGB"))
               for p in sorted((cifar_folder / "train").rglob("*.jpg"))]
    sources = torch.from_numpy(np.stack(sources)).permute(0, 3, 1, 2).float() / 255
    nearest = torch.cdist(view_a.flatten(1), sources.flatten(1)).min(dim=1).values
    assert (nearest > 1.0).all(), "an augmented view equals a stored image"


def test_photometric_ops_run_inside_ffcv_on_the_cpu(cifar_prepared):
    """Forced grayscale (view A) and solarization (view B): the numba operation is in the pipeline."""
    off = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    views = (ViewAugment(**{**off, "grayscale_p": 1.0}), ViewAugment(**{**off, "solarize_p": 1.0}))
    loader = two_view_loader(cifar_prepared / "train.beton", batch_size=32, resolution=32, views=views,
                             num_workers=2, device="cpu")
    assert loader.photometric == "ffcv"
    assert all(isinstance(a, PhotometricAugment) for a in loader.augment)
    batches = loader.raw_batches()
    view_a, view_b, _ = next(batches)
    assert torch.equal(view_a[:, 0], view_a[:, 1]) and torch.equal(view_a[:, 1], view_a[:, 2])
    assert view_b.max() <= 127 / 255 + 1e-6  # every level >= 128 was inverted
    # Leaving an epoch early stops FFCV's thread instead of leaving it blocked on its queue.
    batches.close()
    assert not [t for t in threading.enumerate() if isinstance(t, EpochIterator)]


def test_photometric_path_choice(cifar_prepared):
    assert photometric_path("auto", torch.device("cpu")) == "ffcv"
    assert photometric_path("auto", torch.device("cuda", 0)) == "torch"
    assert photometric_path("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="photometric='numba'"):  # before any compile
        two_view_loader(cifar_prepared / "train.beton", batch_size=8, resolution=32, views=CIFAR_VIEWS,
                        device="cpu", photometric="numba")


def test_eval_loader_returns_every_image_once_exactly(cifar_prepared, source_images, stats):
    images, labels = source_images
    loader = eval_loader(cifar_prepared / "test.beton", batch_size=32, resolution=32, device="cpu")
    got_x, got_y = zip(*[(x, y) for x, y in loader])
    got_x, got_y = torch.cat(got_x), torch.cat(got_y)
    assert torch.equal(got_y, torch.from_numpy(labels))
    pixels = (_unnormalise(got_x, stats) * 255).round().permute(0, 2, 3, 1).numpy()
    # raw mode stores decoded pixels; the 32 px centre crop of a 32 px image is the image.
    assert np.abs(pixels - images).max() <= 1


@pytest.fixture(scope="module")
def imagenette_prepared(imagenette_folder, tmp_path_factory) -> Path:
    """Imagenette stored at 64 px: 'smart' keeps images that small as raw pixels."""
    out = tmp_path_factory.mktemp("imagenette64")
    prepare(str(imagenette_folder), out, max_resolution=64, num_workers=2, progress=False)
    return out


def _channel_moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    per_channel = x.double().transpose(0, 1).flatten(1)
    return per_channel.mean(1).numpy(), per_channel.std(1, unbiased=False).numpy()


@pytest.mark.parametrize("data", ["cifar", "imagenette"])
def test_loaders_standardise_with_their_data_sets_own_statistics(data, request):
    """Centre crops of the images fitting reads (train minus val), through the eval loader:
    each channel comes out with mean ~0 and std ~1, as it would not with ImageNet's constants."""
    out = request.getfixturevalue({"cifar": "cifar_prepared", "imagenette": "imagenette_prepared"}[data])
    resolution = {"cifar": 32, "imagenette": 64}[data]
    manifest = read_manifest(out)
    fitting = fit_part(out, manifest)
    assert manifest["normalization"]["of"] == "train minus val.txt"
    assert manifest["normalization"]["images"] == len(fitting.indices)
    loader = eval_loader(out / "train.beton", batch_size=64, resolution=resolution,
                         device="cpu", indices=fitting.indices)
    x = torch.cat([images for images, _ in loader])
    assert len(x) == len(fitting.indices)
    mean, std = _channel_moments(x)
    assert np.abs(mean).max() < 0.1 and np.abs(std - 1).max() < 0.1, (mean, std)

    stats = dataset_normalization(out / "train.beton")
    pixels = _unnormalise(x, stats)  # back to [0, 1], then ImageNet's way
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean, std = _channel_moments(imagenet)
    if data == "cifar":  # CIFAR-10's blue mean and spread are far from ImageNet's
        assert np.abs(mean).max() > 0.1 or np.abs(std - 1).max() > 0.1, (mean, std)


def test_each_data_set_has_its_own_statistics(cifar_prepared, imagenette_prepared):
    cifar = dataset_normalization(cifar_prepared / "train.beton")
    imagenette = dataset_normalization(imagenette_prepared / "val.beton")  # train's, beside it
    assert np.abs(np.subtract(cifar.mean, imagenette.mean)).max() > 0.01
    assert np.abs(np.subtract(cifar.std, imagenette.std)).max() > 0.01
    assert dataset_normalization(imagenette_prepared / "train.beton") == imagenette


def test_a_loader_refuses_a_manifest_of_an_older_format(cifar_prepared, tmp_path):
    copy = tmp_path / "old"
    copy.mkdir()
    for f in cifar_prepared.iterdir():  # hard links: the .betons stay shared, the manifest is new
        if f.name != "manifest.json":
            (copy / f.name).hardlink_to(f)
    manifest = json.loads((cifar_prepared / "manifest.json").read_text())
    manifest["format_version"] = 2
    del manifest["normalization"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PrepError, match=r"format_version 2, this code reads 3.*harness prep "
                                        r"SOURCE --out .* --force"):
        eval_loader(copy / "test.beton", batch_size=8, resolution=32, device="cpu")


def test_labelled_loader_is_augmented(cifar_prepared):
    loader = labelled_loader(cifar_prepared / "train.beton", batch_size=50, resolution=32, device="cpu")
    batches = list(loader)
    assert len(batches) == 400 // 50
    x, y = batches[0]
    assert x.shape == (50, 3, 32, 32) and y.shape == (50,)
    counts = torch.bincount(torch.cat([y for _, y in batches]), minlength=10)
    assert counts.tolist() == [40] * 10


def test_flip_batch_mirrors_exactly_the_chosen_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    chosen = np.array([True, False, True, True, False, False])
    out = flip_batch(images, chosen, np.empty_like(images))
    for i, flipped in enumerate(chosen):
        assert np.array_equal(out[i], images[i, :, ::-1] if flipped else images[i])


def _flips_in_a_labelled_epoch(cifar_prepared, source: np.ndarray, stats, seed: int) -> np.ndarray:
    """Which of the test split's images the labelled loader mirrored, in the order it served
    them: with crop scale 1 every crop is the whole image, so each output is its source
    image or that image's mirror, nothing else."""
    loader = labelled_loader(cifar_prepared / "test.beton", batch_size=len(source), resolution=32,
                             device="cpu", seed=seed, crop_scale=(1.0, 1.0))
    (x, _), = list(loader)
    pixels = (_unnormalise(x, stats) * 255).round().permute(0, 2, 3, 1).numpy()
    flat = pixels.reshape(len(pixels), -1)
    as_is = np.abs(flat[:, None] - source.reshape(len(source), -1)[None]).max(-1)
    mirrored = np.abs(flat[:, None] - source[:, :, ::-1].reshape(len(source), -1)[None]).max(-1)
    match_as_is, match_mirror = as_is.min(1) <= 1, mirrored.min(1) <= 1
    assert np.all(match_as_is | match_mirror), "an output is neither its image nor its mirror"
    # every source image served once (a symmetric image may match both ways: count it as is)
    served = np.where(match_as_is, as_is.argmin(1), mirrored.argmin(1))
    assert sorted(served) == list(range(len(source)))
    return match_mirror & ~match_as_is


def test_labelled_loader_flips_half_the_images_and_repeats_with_its_seed(
        cifar_prepared, source_images, stats):
    source = source_images[0]
    first = _flips_in_a_labelled_epoch(cifar_prepared, source, stats, seed=3)
    again = _flips_in_a_labelled_epoch(cifar_prepared, source, stats, seed=3)
    other = _flips_in_a_labelled_epoch(cifar_prepared, source, stats, seed=4)
    # Binomial(100, 1/2): outside [30, 70] with probability below 1e-4.
    assert 30 <= first.sum() <= 70, first.sum()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def _shard_worker(rank: int, world: int, init_file: str, beton: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = eval_loader(beton, batch_size=16, resolution=32, device="cpu", num_workers=1)
        eval_labels = torch.cat([y for _, y in ev])
        eval_sums = torch.cat([x.flatten(1).sum(1) for x, _ in ev])
        train_labels = {}
        for decode in ("once", "per_view"):
            train = two_view_loader(beton, batch_size=20, resolution=32, views=CIFAR_VIEWS,
                                    num_workers=1, device="cpu", drop_last=False, decode=decode)
            train_labels[decode] = torch.cat([b.label for b in train])
        torch.save({"eval_labels": eval_labels, "eval_sums": eval_sums,
                    "train_labels": train_labels["once"], "batches": len(train),
                    "per_view_labels": train_labels["per_view"]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_shards_are_disjoint_and_cover_the_split(cifar_prepared, tmp_path, source_images):
    world = 2
    mp.spawn(_shard_worker, args=(world, str(tmp_path / "init"), str(cifar_prepared / "test.beton"),
                                  str(tmp_path)), nprocs=world, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    _, labels = source_images
    # Evaluation: rank r holds images r, r+2, ... : together every image exactly once.
    merged = torch.empty(len(labels), dtype=torch.int64)
    for r, part in enumerate(parts):
        merged[r::world] = part["eval_labels"]
    assert torch.equal(merged, torch.from_numpy(labels))
    assert not torch.allclose(parts[0]["eval_sums"][:10], parts[1]["eval_sums"][:10])
    # Training: 100 images / 2 ranks: 50 each, the class counts of the whole split.
    assert [len(p["train_labels"]) for p in parts] == [50, 50]
    union = torch.bincount(torch.cat([p["train_labels"] for p in parts]), minlength=10)
    assert union.tolist() == np.bincount(labels, minlength=10).tolist()
    # The one-decode path and FFCV's per-view decoders read the same shard, in the same order.
    assert all(torch.equal(p["train_labels"], p["per_view_labels"]) for p in parts)


def test_views_command_writes_a_grid(cifar_prepared, tmp_path):
    out = tmp_path / "grid.png"
    assert cli_main(["views", str(cifar_prepared), "--out", str(out), "--count", "4"]) == 0
    width, height = Image.open(out).size
    # 3 columns x 4 rows of 32 px cells with 2 px padding, enlarged 3x for legibility.
    assert (width, height) == (3 * (3 * 34 + 2), 3 * (4 * 34 + 2))


def test_views_command_on_an_unprepared_folder_says_what_to_do(tmp_path, capsys):
    assert cli_main(["views", str(tmp_path)]) == 2
    assert "harness prep" in capsys.readouterr().err


def test_cached_sample_reader_reads_what_ffcvs_own_reads(cifar_prepared):
    """harness.data.ffcv_reader: every loader's sample reader is one function compiled once
    (numba's disk cache), returning the same bytes as the reader FFCV compiles per loader."""
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.reader import Reader

    from harness.data import ffcv_reader

    assert OSCacheManager.compile_reader is ffcv_reader._compile_reader  # installed on import
    managers = [OSCacheManager(Reader(str(cifar_prepared / "train.beton"))) for _ in range(2)]
    ours = [manager.compile_reader() for manager in managers]
    assert ours[0] is ours[1]  # one compile for every loader of the process
    theirs = ffcv_reader._ffcv_compile_reader(managers[0])
    with managers[0].context as context:
        state = context.state
        addresses = managers[0].ptrs[np.linspace(0, len(managers[0].ptrs) - 1, 25).astype(int)]
        for address in addresses:
            got, want = ours[0](address, state), theirs(address, state)
            assert len(got) > 0 and np.array_equal(got, want)


def test_a_short_lived_loader_skips_its_compile_and_gives_the_same_batches(cifar_prepared):
    """harness.data.loaders.interpreted: a loader with one decoding thread that decodes few
    images in its life runs FFCV's pipeline uncompiled (FFCV's pure-Python mode), and yields
    exactly the batches its compiled twin does: the one-decode two-view loader (seeded crops,
    flips and photometric draws), the labelled loader (seeded crops and flips) and the eval
    loader (no draws)."""
    from ffcv.pipeline.compiler import Compiler

    from harness.data.loaders import INTERPRET_UP_TO, eval_loader, labelled_loader, two_view_loader

    views = CIFAR_VIEWS
    path = cifar_prepared / "train.beton"

    def two_view(passes, workers=1):
        return two_view_loader(path, batch_size=64, resolution=32, views=views, seed=3,
                               num_workers=workers, distributed=False, passes=passes)

    compiled, uncompiled = two_view(None), two_view(1)
    assert (compiled.interpreted, uncompiled.interpreted) == (False, True)
    assert Compiler.is_enabled  # only that loader's build ran uncompiled
    pairs = list(zip(compiled.uint8_batches(), uncompiled.uint8_batches(), strict=True))
    assert len(pairs) == 400 // 64
    for a, b in pairs:
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # A long life, or a second decoding thread (whose parallel decode Python would lose): compiled.
    assert not two_view(INTERPRET_UP_TO // 400 + 1).interpreted
    assert two_view(INTERPRET_UP_TO // 400).interpreted
    assert not two_view(1, workers=2).interpreted

    def images(passes):
        loader = eval_loader(path, batch_size=100, resolution=32, num_workers=1,
                             distributed=False, passes=passes)
        return [(x.clone(), y) for x, y in loader]

    for (x, y), (x2, y2) in zip(images(None), images(1), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)

    def labelled(passes):  # crops seeded per sample too (SeededCropDecoder): two epochs alike
        loader = labelled_loader(path, batch_size=100, resolution=32, num_workers=1, seed=2,
                                 distributed=False, passes=passes)
        assert loader.interpreted == (passes is not None)
        return [(x.clone(), y) for _ in range(2) for x, y in loader]

    for (x, y), (x2, y2) in zip(labelled(None), labelled(2), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)

