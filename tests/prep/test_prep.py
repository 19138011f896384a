"""data_prep on real images: small CIFAR-10 / Imagenette / Tiny-ImageNet subsets in, and every
.beton read back and compared with the source files decoded by PIL; the normalisation
statistics recomputed from the decoded pixels; imported subset lists checked image by image."""

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import threading
import time

import numpy as np
import pytest
from ffcv.reader import Reader
from PIL import Image

import data_prep.images
from data_prep import PrepError, prepare, read_manifest
from data_prep.manifest import FORMAT_VERSION
from data_prep.images import IMAGE_EXTENSIONS
from data_prep.subsets import SUBSET_FRACTIONS, subset_size
from processes import guard

FAST = {"num_workers": 2, "progress": False}


def read_beton(path):
    """Every image and label of a .beton, decoded without FFCV's numba-compiled Loader."""
    reader = Reader(str(path))
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    decoded = []
    for meta in reader.metadata["f0"]:  # fields in writing order: f0 image, f1 label
        ptr = int(meta["data_ptr"])
        data = blob[ptr:ptr + size_at[ptr]]
        if meta["mode"] == 1:  # raw pixels (ffcv's IMAGE_MODES['raw'])
            decoded.append(np.array(data).reshape(meta["height"], meta["width"], 3))
        else:
            decoded.append(np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB")))
    return decoded, reader.metadata["f1"].copy()


def source_order(folder, split, skip=()):
    """(file, label) in the order prepare numbers them: classes by name, then file names."""
    classes = sorted(p.name for p in (folder / split).iterdir())
    files = sorted((f for f in (folder / split).glob("*/*")
                    if f.suffix.lower() in IMAGE_EXTENSIONS and f.name not in skip),
                   key=lambda f: (f.parent.name, f.name))
    return [(f, classes.index(f.parent.name)) for f in files]


def pil_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def image_digest(pixels):
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def fitting_pixels(out, manifest):
    """Every pixel of the train images outside val.txt, as decoded: (N x 3 in [0, 1], images)."""
    decoded, _ = read_beton(out / "train.beton")
    held_out = set(data_prep.validation_part(out, manifest).indices.tolist())
    kept = [p for i, p in enumerate(decoded) if i not in held_out]
    return np.concatenate([p.reshape(-1, 3) for p in kept]).astype(np.float64) / 255, len(kept)


def copy_classes(src, dest, classes, per_class):
    for split, n in per_class.items():
        for cls in classes:
            (dest / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(f, dest / split / cls / f.name)


@pytest.fixture(scope="module")
def cifar_raw(cifar_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar-raw")
    return out, prepare(str(cifar_folder), out, write_mode="raw", **FAST)


@pytest.fixture(scope="module")
def messy_folder(cifar_folder, tmp_path_factory):
    """Real CIFAR images plus the usual litter: a truncated JPEG, a .jpg that is not an image,
    a README, and greyscale, RGBA and CMYK images that must come out as RGB."""
    root = tmp_path_factory.mktemp("messy")
    copy_classes(cifar_folder, root, ("bird", "cat", "dog"), {"train": 5, "test": 2})
    real = sorted((cifar_folder / "train" / "cat").iterdir())[10]
    blob = real.read_bytes()
    (root / "train/cat/truncated.jpg").write_bytes(blob[:len(blob) // 2])
    (root / "test/dog/garbage.jpg").write_bytes(b"this is not a JPEG " * 40)
    (root / "train/bird/README.txt").write_text("notes, not an image\n")
    with Image.open(real) as img:
        img.convert("L").save(root / "train/dog/grey.png")
        img.convert("RGBA").save(root / "train/dog/rgba.png")
        img.convert("CMYK").save(root / "train/dog/cmyk.jpg")
    return root


def test_raw_betons_hold_the_source_pixels_and_labels_in_order(cifar_folder, cifar_raw):
    out, _ = cifar_raw
    for split in ("train", "test"):
        decoded, labels = read_beton(out / f"{split}.beton")
        expected = source_order(cifar_folder, split)
        assert labels.tolist() == [label for _, label in expected]
        for pixels, (file, _) in zip(decoded, expected):
            np.testing.assert_array_equal(pixels, pil_rgb(file), err_msg=str(file))


def test_manifest_records_counts_classes_and_provenance(cifar_folder, cifar_raw):
    out, manifest = cifar_raw
    assert manifest == read_manifest(out)
    assert manifest["classes"] == sorted(p.name for p in (cifar_folder / "train").iterdir())
    assert list(manifest["splits"]) == ["train", "test"]
    for split, n in (("train", 40), ("test", 10)):
        entry = manifest["splits"][split]
        assert entry["file"] == f"{split}.beton"
        assert (entry["count"], entry["per_class"]) == (10 * n, [n] * 10)
        assert entry["image_size"] == {"min_height": 32, "max_height": 32, "mean_height": 32.0,
                                       "min_width": 32, "max_width": 32, "mean_width": 32.0}
        assert entry["bytes"] == (out / entry["file"]).stat().st_size
    assert manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["source"]["kind"] == "folder"
    assert manifest["source"]["path"] == str(cifar_folder.resolve())
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["options"]["write_mode"] == "raw"
    assert manifest["options"]["seed"] == 0
    assert manifest["options"]["subset_lists"] == {}
    assert manifest["versions"]["ffcv"] == "1.0.2"
    assert {"python", "numpy", "pillow", "torch", "torchvision"} <= set(manifest["versions"])
    assert (manifest["skipped"], manifest["ignored_files"]) == ([], 0)
    assert manifest["created"].endswith("+00:00") and manifest["seconds"] > 0
    assert not list(out.glob(".partial-*"))


def test_normalization_is_the_channel_statistics_of_what_fitting_reads(cifar_raw):
    out, manifest = cifar_raw
    pixels, images = fitting_pixels(out, manifest)
    norm = manifest["normalization"]
    assert (norm["of"], norm["images"], norm["pixels"]) == ("train minus val.txt", images,
                                                            len(pixels))
    assert images == 400 - manifest["validation"]["count"]
    np.testing.assert_allclose(norm["mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(norm["std"], pixels.std(axis=0), rtol=0, atol=1e-6)


def test_a_source_without_train_split_is_normalised_by_all_its_images(tiny_imagenet_folder,
                                                                     tmp_path):
    manifest = prepare(str(tiny_imagenet_folder), tmp_path, write_mode="raw", **FAST)
    assert (list(manifest["splits"]), manifest["validation"], manifest["subsets"]) == \
        (["val"], None, {})
    decoded, _ = read_beton(tmp_path / "val.beton")
    pixels = np.concatenate([p.reshape(-1, 3) for p in decoded]) / 255
    norm = manifest["normalization"]
    assert (norm["of"], norm["images"]) == ("all splits (no train split)", 30)
    np.testing.assert_allclose(norm["mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(norm["std"], pixels.std(axis=0), rtol=0, atol=1e-6)


def test_jpg_mode_stays_close_to_the_source_and_loads_through_ffcv(cifar_folder, tmp_path):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    prepare(str(cifar_folder), tmp_path, write_mode="jpg", jpeg_quality=90, **FAST)
    decoded, labels = read_beton(tmp_path / "train.beton")
    expected = source_order(cifar_folder, "train")
    assert labels.tolist() == [label for _, label in expected]
    for pixels, (file, _) in zip(decoded, expected):
        assert np.abs(pixels.astype(int) - pil_rgb(file)).mean() < 8, file

    # The one FFCV Loader of this module: the file must also decode through FFCV itself.
    loader = Loader(str(tmp_path / "test.beton"), batch_size=50, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    batches = list(loader)
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    loaded_labels = np.concatenate([np.asarray(y) for _, y in batches]).ravel()
    expected = source_order(cifar_folder, "test")
    assert images.shape == (100, 32, 32, 3)
    assert loaded_labels.tolist() == [label for _, label in expected]
    for pixels, (file, _) in zip(images, expected):
        assert np.abs(pixels.astype(int) - pil_rgb(file)).mean() < 8, file


def test_max_resolution_shrinks_imagenette(imagenette_folder, tmp_path):
    manifest = prepare(str(imagenette_folder), tmp_path, max_resolution=64, **FAST)
    assert list(manifest["splits"]) == ["train", "val"]
    assert len(manifest["classes"]) == 10 and manifest["classes"][0] == "n01440764"
    for split, n in (("train", 12), ("val", 4)):
        entry = manifest["splits"][split]
        assert (entry["count"], entry["per_class"]) == (10 * n, [n] * 10)
        size = entry["image_size"]
        assert max(size["max_height"], size["max_width"]) <= 64
        decoded, _ = read_beton(tmp_path / entry["file"])
        assert all(max(p.shape[:2]) == 64 for p in decoded)  # 224x224 sources: exactly 64
    assert manifest["options"]["max_resolution"] == 64
    # The statistics are of the stored 64 px pixels ('smart' keeps these raw), not the sources'.
    pixels, images = fitting_pixels(tmp_path, manifest)
    norm = manifest["normalization"]
    assert (norm["images"], norm["pixels"]) == (images, images * 64 * 64)
    np.testing.assert_allclose(norm["mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(norm["std"], pixels.std(axis=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", ["tar", "tar.gz"])
def test_tar_archives_give_the_same_betons_as_the_folder(cifar_folder, cifar_raw, tmp_path,
                                                         suffix):
    archive = tmp_path / f"cifar.{suffix}"
    with tarfile.open(archive, "w:gz" if suffix == "tar.gz" else "w") as tar:
        tar.add(cifar_folder, arcname="cifar10")  # one wrapping folder, as archives often have
    out = tmp_path / "out"
    manifest = prepare(str(archive), out, write_mode="raw", **FAST)
    folder_out, folder_manifest = cifar_raw

    assert manifest["classes"] == folder_manifest["classes"]
    for split in ("train", "test"):
        for key in ("count", "per_class", "image_size"):
            assert manifest["splits"][split][key] == folder_manifest["splits"][split][key]
        got, got_labels = read_beton(out / f"{split}.beton")
        want, want_labels = read_beton(folder_out / f"{split}.beton")
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
    assert manifest["source"]["kind"] == "tar"
    assert manifest["source"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["subsets"] == folder_manifest["subsets"]


def test_one_archive_per_split_is_merged_as_cifar10_is_shipped(cifar_folder, cifar_raw,
                                                                tmp_path):
    archives = []
    for split in ("train", "test"):
        archives.append(tmp_path / f"{split}.tar.gz")
        with tarfile.open(archives[-1], "w:gz") as tar:
            tar.add(cifar_folder / split, arcname=split)
    manifest = prepare([str(a) for a in archives], tmp_path / "out", write_mode="raw", **FAST)
    folder_out, folder_manifest = cifar_raw
    for split in ("train", "test"):
        assert manifest["splits"][split]["per_class"] == folder_manifest["splits"][split]["per_class"]
        got, got_labels = read_beton(tmp_path / "out" / f"{split}.beton")
        want, want_labels = read_beton(folder_out / f"{split}.beton")
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
    assert manifest["source"]["kind"] == "merged"
    assert [p["sha256"] for p in manifest["source"]["parts"]] == [
        hashlib.sha256(a.read_bytes()).hexdigest() for a in archives]

    with pytest.raises(PrepError, match="split 'train' is in more than one source"):
        prepare([str(archives[0]), str(archives[0])], tmp_path / "twice", **FAST)
    assert not (tmp_path / "twice" / "manifest.json").exists()


def test_label_subsets_are_balanced_and_reproducible(cifar_folder, cifar_raw, tmp_path):
    out, manifest = cifar_raw
    again = prepare(str(cifar_folder), tmp_path, write_mode="raw", **FAST)
    _, train_labels = read_beton(out / "train.beton")
    picked = {}
    for name, fraction in SUBSET_FRACTIONS.items():
        entry = manifest["subsets"][name]
        text = (out / entry["file"]).read_text()
        assert text == (tmp_path / entry["file"]).read_text()  # same on a second run
        indices = np.array([int(line) for line in text.split()])
        assert np.all(np.diff(indices) > 0) and 0 <= indices.min() and indices.max() < 400
        per_class = np.bincount(train_labels[indices], minlength=10).tolist()
        assert per_class == entry["per_class"] == [subset_size(fraction, 40)] * 10
        assert entry["count"] == len(indices)
        picked[name] = set(indices.tolist())
    assert manifest["subsets"]["1pct"]["per_class"] == [1] * 10  # round(0.4) = 0, at least 1
    assert manifest["subsets"]["10pct"]["per_class"] == [4] * 10
    assert picked["1pct"] <= picked["10pct"]
    assert again["subsets"] == manifest["subsets"]
    assert again["fingerprint"] == manifest["fingerprint"]


def test_validation_list_is_carved_from_train_and_kept_apart(cifar_raw, cifar_folder, tmp_path):
    out, manifest = cifar_raw
    val = manifest["validation"]
    assert (val["split"], val["file"], val["fraction"], val["max_per_class"]) == \
        ("train", "val.txt", 0.1, 100)
    text = (out / "val.txt").read_text()
    assert val["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    indices = np.array([int(line) for line in text.split()])
    _, train_labels = read_beton(out / "train.beton")
    assert np.all(np.diff(indices) > 0) and indices.max() < 400
    assert np.bincount(train_labels[indices], minlength=10).tolist() == val["per_class"] == [4] * 10
    for name in SUBSET_FRACTIONS:  # the label subsets are drawn from the rest of train
        subset = (out / manifest["subsets"][name]["file"]).read_text().split()
        assert not set(map(int, subset)) & set(indices.tolist())
    again = prepare(str(cifar_folder), tmp_path / "again", write_mode="raw", **FAST)
    assert (tmp_path / "again" / "val.txt").read_text() == text  # seeded: the same list

    capped = prepare(str(cifar_folder), tmp_path / "capped", write_mode="raw",
                     val_fraction=0.5, val_max_per_class=3, **FAST)
    assert capped["validation"]["per_class"] == [3] * 10  # min(3, round(0.5 * 40))
    assert capped["fingerprint"] != again["fingerprint"]
    assert data_prep.fit_part(tmp_path / "capped", capped).count(capped) == 370

    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    first = text.split()[0]  # swapped for another training image: same size, other content
    other = next(str(i) for i in range(400) if len(str(i)) == len(first) and i not in indices)
    (edited / "val.txt").write_text(text.replace(first + "\n", other + "\n", 1))
    with pytest.raises(PrepError, match="val.txt does not match"):
        data_prep.validation_part(edited, read_manifest(edited))


def test_a_shipped_val_split_is_the_validation_split(cifar_folder, tmp_path):
    root = tmp_path / "three"
    copy_classes(cifar_folder, root, ("bird", "cat"), {"train": 8, "test": 4})
    for cls in ("bird", "cat"):  # val: other training images, beside train and test
        (root / "val" / cls).mkdir(parents=True)
        for image in sorted((cifar_folder / "train" / cls).iterdir())[30:33]:
            shutil.copy(image, root / "val" / cls / image.name)
    manifest = prepare(str(root), tmp_path / "out", write_mode="raw", **FAST)
    assert manifest["validation"] == {"split": "val", "count": 6, "per_class": [3, 3]}
    assert not (tmp_path / "out" / "val.txt").exists()
    part = data_prep.validation_part(tmp_path / "out", manifest)
    assert (part.split, part.indices) == ("val", None)
    assert data_prep.fit_part(tmp_path / "out", manifest).indices is None  # all of train


def test_validation_errors_name_the_problem(cifar_folder, tmp_path):
    root = tmp_path / "tiny"
    copy_classes(cifar_folder, root, ("bird", "cat"), {"train": 1, "test": 1})
    with pytest.raises(PrepError, match="class bird has 1 training image.*leaves none"):
        prepare(str(root), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    for bad, message in (({"val_fraction": 1.0}, "val_fraction"),
                         ({"val_max_per_class": 0}, "val_max_per_class")):
        with pytest.raises(PrepError, match=message):
            prepare(str(cifar_folder), tmp_path / "bad", **bad, **FAST)


@pytest.fixture(scope="module")
def named_folder(cifar_folder, tmp_path_factory):
    """The CIFAR subset with its training images renamed <class>_<file>: bare names that are
    unique, as ImageNet's (n01440764_10026.JPEG) are."""
    root = tmp_path_factory.mktemp("named")
    for split in ("train", "test"):
        for f in sorted((cifar_folder / split).glob("*/*")):
            (root / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            name = f"{f.parent.name}_{f.name}" if split == "train" else f.name
            shutil.copy(f, root / split / f.parent.name / name)
    return root


def subset_list(path, files, forms=("bare",)):
    """Write a subset list naming `files`, cycling through the ways a line may name one."""
    form = {"bare": lambda f: f.name, "class": lambda f: f"{f.parent.name}/{f.name}",
            "root": lambda f: f"train/{f.parent.name}/{f.name}",
            "dotted": lambda f: f"  ./{f.parent.name}//{f.name}  "}
    lines = [form[forms[i % len(forms)]](f) for i, f in enumerate(files)]
    path.write_text("\n" + "\n\n".join(lines) + "\r\n")
    return path


def test_an_imported_subset_list_gives_exactly_the_listed_images(named_folder, tmp_path):
    train = [f for f, _ in source_order(named_folder, "train")]  # in train.beton's order
    # 30 of class 0's 40 images: val.txt's 4 of class 0 must come from the other 10.
    picked = [*range(30), 45, 123, 399]
    listing = subset_list(tmp_path / "1percent.txt", [train[i] for i in picked],
                          ("bare", "class", "root", "dotted"))
    mine = subset_list(tmp_path / "mine.txt", train[200:203], ("root",))
    out = tmp_path / "out"
    manifest = prepare(str(named_folder), out, write_mode="raw", **FAST,
                       subset_lists={"1pct": listing, "mine": mine})

    entry = manifest["subsets"]["1pct"]
    assert entry["imported_from"] == str(listing.resolve()) and "fraction" not in entry
    assert entry["imported_sha256"] == hashlib.sha256(listing.read_bytes()).hexdigest()
    assert manifest["options"]["subset_lists"] == {
        "1pct": entry["imported_sha256"], "mine": manifest["subsets"]["mine"]["imported_sha256"]}
    indices = data_prep.subset_part(out, manifest, "1pct").indices
    assert indices.tolist() == picked
    decoded, labels = read_beton(out / "train.beton")
    assert [image_digest(decoded[i]) for i in indices] == \
        [image_digest(pil_rgb(train[i])) for i in picked]
    assert entry["per_class"] == np.bincount(labels[indices], minlength=10).tolist()
    assert entry["per_class"][0] == 30 and entry["count"] == len(picked)
    assert list(manifest["subsets"]) == ["1pct", "10pct", "mine"]
    assert data_prep.subset_part(out, manifest, "mine").indices.tolist() == [200, 201, 202]
    assert manifest["subsets"]["10pct"]["fraction"] == 0.1  # still seeded, outside val

    val = set(data_prep.validation_part(out, manifest).indices.tolist())
    assert manifest["validation"]["per_class"] == [4] * 10
    assert not val & set(picked) and not val & {200, 201, 202}
    plain = prepare(str(named_folder), tmp_path / "plain", write_mode="raw", **FAST)
    assert set(data_prep.validation_part(tmp_path / "plain", plain).indices.tolist()) & \
        set(picked), "without the import, the seeded val.txt would have overlapped the list"


def test_a_changed_subset_list_re_prepares(named_folder, tmp_path):
    train = [f for f, _ in source_order(named_folder, "train")]
    listing = subset_list(tmp_path / "list.txt", train[:5])
    out = tmp_path / "out"
    first = prepare(str(named_folder), out, **FAST, subset_lists={"1pct": listing})
    beton = (out / "train.beton").stat()

    moved = tmp_path / "moved.txt"  # the same contents elsewhere: nothing to redo
    shutil.copy(listing, moved)
    same = prepare(str(named_folder), out, **FAST, subset_lists={"1pct": moved})
    assert same == first and (out / "train.beton").stat().st_ino == beton.st_ino

    subset_list(listing, train[:6])
    changed = prepare(str(named_folder), out, **FAST, subset_lists={"1pct": listing})
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["subsets"]["1pct"]["count"] == 6
    assert changed["subsets"]["1pct"]["imported_sha256"] != \
        first["subsets"]["1pct"]["imported_sha256"]
    seeded = prepare(str(named_folder), out, **FAST)
    assert seeded["fingerprint"] not in (first["fingerprint"], changed["fingerprint"])
    assert seeded["subsets"]["1pct"]["fraction"] == 0.01


def test_subset_list_errors_name_the_problem(named_folder, cifar_folder, tiny_imagenet_folder,
                                             tmp_path):
    train = [f for f, _ in source_order(named_folder, "train")]
    good = subset_list(tmp_path / "good.txt", train[:3])
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("\n".join([*(f"nope{i}.jpg" for i in range(6)), train[0].name,
                                   "test/cat/0000.jpg", train[1].name]))
    cases = [
        (named_folder, {"1pct": tmp_path / "missing.txt"}, "missing.txt does not exist"),
        (named_folder, {"1%": good}, "subset name '1%'.*letters, digits"),
        (named_folder, {"1pct": subset_list(tmp_path / "blank.txt", [])}, "blank.txt is empty"),
        (named_folder, {"1pct": unknown}, r"7 of its 9 names are not among the readable train "
                                           r"images, e.g. nope0.jpg, nope1.jpg, nope2.jpg, "
                                           r"nope3.jpg, nope4.jpg and 2 more"),
        (cifar_folder, {"1pct": subset_list(tmp_path / "bare.txt", [train[0].parent / "0000.jpg"])},
         r"1 names match more than one train image, e.g. 0000.jpg \(10 images\).*<class>/<file>"),
        (named_folder, {"1pct": subset_list(tmp_path / "twice.txt", [train[0], train[0]],
                                            ("bare", "class"))},
         f"name an image an earlier line already names, e.g. airplane/{train[0].name}"),
        # All 40 images of class 0: none left for its 4 validation images.
        (named_folder, {"1pct": subset_list(tmp_path / "class0.txt", train[:40])},
         "class airplane: the imported subset list.*leaving 0 outside them for its 4 "
         "validation images.*--val-fraction"),
        (tiny_imagenet_folder, {"1pct": good}, "no train split"),
    ]
    for source, lists, expected in cases:
        with pytest.raises(PrepError, match=expected):
            prepare(str(source), tmp_path / "out", **FAST, subset_lists=lists)
        assert not (tmp_path / "out").exists(), expected  # refused before anything is written


def test_prep_command_imports_subset_lists(named_folder, tmp_path, capsys):
    from harness.cli import main

    listing = subset_list(tmp_path / "few.txt",
                          [f for f, _ in source_order(named_folder, "train")][::100])
    out = tmp_path / "out"
    assert main(["prep", str(named_folder), "--out", str(out), "--workers", "2",
                 "--subset-list", f"few={listing}"]) == 0
    printed = capsys.readouterr().out
    assert f"few:        4 images ({listing.resolve()})" in printed
    assert "10pct:       40 images (seeded, 10% per class)" in printed
    assert "normalisation: mean (0.4" in printed and "of train minus val.txt" in printed
    assert read_manifest(out)["subsets"]["few"]["count"] == 4
    assert main(["prep", str(named_folder), "--out", str(out), "--subset-list", "few"]) == 2
    assert "write NAME=FILE" in capsys.readouterr().err


def test_up_to_date_output_is_kept_until_forced_or_options_change(cifar_folder, tmp_path):
    abandoned = tmp_path / ".partial-999999999"  # left by a killed run: no such process
    abandoned.mkdir()
    first = prepare(str(cifar_folder), tmp_path, write_mode="raw", **FAST)
    assert not abandoned.exists()
    beton = tmp_path / "train.beton"
    before = beton.stat()

    again = prepare(str(cifar_folder), tmp_path, write_mode="raw", **FAST)
    assert again == first
    assert (beton.stat().st_ino, beton.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    forced = prepare(str(cifar_folder), tmp_path, write_mode="raw", force=True, **FAST)
    assert forced["created"] >= first["created"] and forced["fingerprint"] == first["fingerprint"]
    assert beton.stat().st_ino != before.st_ino
    rewritten = beton.stat()

    changed = prepare(str(cifar_folder), tmp_path, write_mode="jpg", **FAST)
    assert changed["fingerprint"] != first["fingerprint"]
    assert beton.stat().st_ino != rewritten.st_ino
    assert read_manifest(tmp_path)["options"]["write_mode"] == "jpg"


def test_split_from_val_makes_a_seeded_stratified_split(tiny_imagenet_folder, tmp_path):
    manifest = prepare(str(tiny_imagenet_folder), tmp_path / "a", split_from="val", seed=3,
                       write_mode="raw", **FAST)
    assert list(manifest["splits"]) == ["train", "test"]
    assert not (tmp_path / "a" / "val.beton").exists()
    for split in ("train", "test"):
        entry = manifest["splits"][split]
        assert (entry["per_class"], entry["source_split"]) == ([3] * 5, "val")
    assert manifest["subsets"]["1pct"]["per_class"] == [1] * 5

    source = {image_digest(pil_rgb(f)): label
              for f, label in source_order(tiny_imagenet_folder, "val")}
    parts = {}
    for split in ("train", "test"):
        decoded, labels = read_beton(tmp_path / "a" / f"{split}.beton")
        parts[split] = [image_digest(p) for p in decoded]
        assert [source[d] for d in parts[split]] == labels.tolist()
    assert not set(parts["train"]) & set(parts["test"])
    assert set(parts["train"]) | set(parts["test"]) == set(source)

    def train_digests(out):
        return [image_digest(p) for p in read_beton(out / "train.beton")[0]]

    same = prepare(str(tiny_imagenet_folder), tmp_path / "b", split_from="val", seed=3,
                   write_mode="raw", **FAST)
    assert train_digests(tmp_path / "b") == parts["train"]
    assert same["subsets"] == manifest["subsets"]
    other = prepare(str(tiny_imagenet_folder), tmp_path / "c", split_from="val", seed=4,
                    write_mode="raw", **FAST)
    assert other["splits"]["train"]["per_class"] == [3] * 5
    assert train_digests(tmp_path / "c") != parts["train"]


def test_split_from_errors_name_the_problem(cifar_folder, tiny_imagenet_folder, tmp_path):
    with pytest.raises(PrepError, match="already has test"):
        prepare(str(cifar_folder), tmp_path, split_from="train", **FAST)
    with pytest.raises(PrepError, match="splits are val"):
        prepare(str(tiny_imagenet_folder), tmp_path, split_from="train", **FAST)
    with pytest.raises(PrepError, match="test part empty"):  # round(0.05 * 6) = 0
        prepare(str(tiny_imagenet_folder), tmp_path, split_from="val", test_fraction=0.05, **FAST)
    assert not tmp_path.joinpath("manifest.json").exists()


def test_unreadable_images_are_skipped_listed_and_the_rest_converted_to_rgb(messy_folder, tmp_path):
    with pytest.warns(UserWarning) as caught:
        manifest = prepare(str(messy_folder), tmp_path, write_mode="raw", **FAST)
    messages = " ".join(str(w.message) for w in caught)
    assert "ignored 1 file" in messages and "train/bird/README.txt" in messages
    assert "skipped 2 unreadable" in messages

    assert sorted(s["path"] for s in manifest["skipped"]) == ["test/dog/garbage.jpg",
                                                              "train/cat/truncated.jpg"]
    assert all(s["error"] for s in manifest["skipped"])
    assert manifest["ignored_files"] == 1
    assert manifest["splits"]["train"]["per_class"] == [5, 5, 8]
    assert manifest["splits"]["test"]["per_class"] == [2, 2, 2]
    skip = ("truncated.jpg", "garbage.jpg")
    for split in ("train", "test"):
        decoded, labels = read_beton(tmp_path / f"{split}.beton")
        expected = source_order(messy_folder, split, skip=skip)
        assert labels.tolist() == [label for _, label in expected]
        for pixels, (file, _) in zip(decoded, expected):  # grey, RGBA, CMYK included
            np.testing.assert_array_equal(pixels, pil_rgb(file), err_msg=str(file))


@pytest.mark.filterwarnings("ignore:ignored 1 file")
def test_strict_refuses_unreadable_images_by_name(messy_folder, tmp_path):
    with pytest.raises(PrepError, match="strict") as error:
        prepare(str(messy_folder), tmp_path, strict=True, **FAST)
    assert "train/cat/truncated.jpg" in str(error.value)
    assert "test/dog/garbage.jpg" in str(error.value)
    assert not tmp_path.joinpath("manifest.json").exists()


def _tree(root, layout):
    """Build a folder from {relative path: bytes}; a path ending in / is an empty folder."""
    for rel, data in layout.items():
        if rel.endswith("/"):
            (root / rel).mkdir(parents=True, exist_ok=True)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def jpeg(cifar_folder):
    return sorted((cifar_folder / "test" / "cat").iterdir())[0].read_bytes()


@pytest.mark.parametrize("layout, expected", [
    ({"train/cat/a.jpg": 1, "train/dog/": 0, "test/cat/a.jpg": 1, "test/dog/a.jpg": 1},
     "without images in .*: train/dog"),
    ({"train/cat/a.jpg": 1, "train/dog/a.jpg": 1, "test/cat/a.jpg": 1},
     "different classes: test/ lacks dog"),
    ({"cat/a.jpg": 1, "dog/a.jpg": 1}, "class folders with images directly"),
    ({"train/cat/notes.txt": 1}, "without images in .*: train/cat"),
    ({"images/a.txt": 1}, "no train/, val/ or test/ folder"),
])
def test_bad_layouts_are_refused_before_any_work(tmp_path, jpeg, layout, expected):
    source = _tree(tmp_path / "src", {rel: jpeg if keep else b"" for rel, keep in layout.items()})
    with pytest.raises(PrepError, match=expected):
        prepare(str(source), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_bad_paths_and_archives_are_refused(tmp_path):
    with pytest.raises(PrepError, match="does not exist"):
        prepare(str(tmp_path / "nowhere"), tmp_path / "out", **FAST)
    corrupt = tmp_path / "broken.tar.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PrepError, match="corrupt"):
        prepare(str(corrupt), tmp_path / "out", **FAST)
    not_archive = tmp_path / "images.zip"
    not_archive.write_bytes(b"PK")
    with pytest.raises(PrepError, match="neither an image folder nor a tar archive"):
        prepare(str(not_archive), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, expected", [
    ({"write_mode": "png"}, "write_mode"),
    ({"jpeg_quality": 0}, "jpeg_quality"),
    ({"jpeg_quality": 101}, "jpeg_quality"),
    ({"max_resolution": 0}, "max_resolution"),
    ({"max_resolution": 64.0}, "max_resolution"),
    ({"split_from": "validation"}, "split_from"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"seed": -1}, "seed"),
    ({"num_workers": 0}, "num_workers"),
])
def test_bad_options_are_refused(tmp_path, options, expected):
    with pytest.raises(PrepError, match=expected):
        prepare(str(tmp_path / "nowhere"), tmp_path / "out", **{**FAST, **options})


def test_failure_while_writing_leaves_no_manifest(cifar_folder, tmp_path, monkeypatch):
    victim = sorted((cifar_folder / "train" / "truck").iterdir())[3]
    real_load = data_prep.images.load_rgb

    def load_rgb(data):  # FFCV's writer processes are forked, so they inherit this
        if data == str(victim):
            raise OSError("disk went away")
        return real_load(data)

    monkeypatch.setattr(data_prep.images, "load_rgb", load_rgb)
    with pytest.raises(PrepError, match=f"train/truck/{victim.name}.*disk went away"):
        prepare(str(cifar_folder), tmp_path, **FAST)
    assert os.listdir(tmp_path) == []  # no manifest, no .beton, no .partial-<pid>
    with pytest.raises(PrepError, match="harness prep"):
        read_manifest(tmp_path)

    # A failed rewrite leaves the previous, complete preparation as it was.
    monkeypatch.setattr(data_prep.images, "load_rgb", real_load)
    first = prepare(str(cifar_folder), tmp_path, **FAST)
    before = (tmp_path / "train.beton").stat().st_ino
    monkeypatch.setattr(data_prep.images, "load_rgb", load_rgb)
    with pytest.raises(PrepError, match="could not encode"):
        prepare(str(cifar_folder), tmp_path, force=True, **FAST)
    assert read_manifest(tmp_path) == first
    assert (tmp_path / "train.beton").stat().st_ino == before
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("thread", ["main", "other"])
def test_a_writer_process_that_dies_fails_the_preparation_instead_of_hanging(
        cifar_folder, tmp_path, monkeypatch, thread):
    """In the main thread (the CLI) and in another (no signal can reach its wait there: the
    writer's own waits must notice the dead worker)."""
    victim = sorted((cifar_folder / "test" / "ship").iterdir())[0]
    real_load = data_prep.images.load_rgb

    def load_rgb(data):  # as if the OS killed the worker for lack of memory
        if data == str(victim):
            os._exit(9)
        return real_load(data)

    monkeypatch.setattr(data_prep.images, "load_rgb", load_rgb)
    errors = []

    def run():
        try:
            prepare(str(cifar_folder), tmp_path, **FAST)
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            errors.append(err)

    started = time.monotonic()
    if thread == "main":
        run()
    else:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=guard(6))
        assert not worker.is_alive(), "prepare hung after its writer process died"
    assert time.monotonic() - started < guard(6)  # it failed, and did not wait for a hang
    assert len(errors) == 1 and isinstance(errors[0], PrepError), errors
    assert re.search("writer process died .*exit code 9", str(errors[0])), errors[0]
    assert os.listdir(tmp_path) == []


def test_read_manifest_explains_unprepared_and_damaged_folders(cifar_raw, tmp_path):
    with pytest.raises(PrepError, match="not a prepared data set.*harness prep"):
        read_manifest(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(cifar_raw[0], copy)
    with open(copy / "test.beton", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(PrepError, match="test.beton has 1000 bytes"):
        read_manifest(copy)
    (copy / "test.beton").unlink()
    with pytest.raises(PrepError, match="test.beton .* is missing"):
        read_manifest(copy)


def test_a_manifest_of_an_older_format_is_refused(cifar_raw, tmp_path):
    shutil.copytree(cifar_raw[0], tmp_path, dirs_exist_ok=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["normalization"]) >= {"mean", "std", "of", "images"}
    del manifest["normalization"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PrepError, match=r"incomplete \(no normalization\).*--force"):
        read_manifest(tmp_path)
    manifest["format_version"] = 2  # written before normalisation statistics existed
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PrepError, match=r"format_version 2, this code reads 3: run `harness "
                                        r"prep SOURCE --out .*` --force"):
        read_manifest(tmp_path)


def test_torchvision_name_without_network_fails_fast(tmp_path, monkeypatch):
    # Point every download at a closed local port: the offline case on any machine, and no
    # test run ever fetches CIFAR from the internet.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    started = time.monotonic()
    with pytest.raises(PrepError, match="no network.*image folder"):
        prepare("cifar10", tmp_path / "out", download_root=tmp_path / "downloads", **FAST)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()
