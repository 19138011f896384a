"""`prepare`: one source in; FFCV .beton files, label-subset lists and a manifest out.

The work runs in the order data flows: check the options and any imported subset lists, open
the source, stop early if `out` already holds this exact preparation, check the layout,
decode-check every image (measuring its pixels on the way), derive the splits, place the
imported lists' images, carve the validation list outside them, compute the normalisation
statistics of what fitting reads, write everything into `out/.partial-<pid>`, then commit
(manifest.commit). Every bad input fails with a PrepError before the expensive steps.
"""

import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ffcv.fields import RGBImageField

from . import images
from .beton import write_beton
from . import defaults as D
from .defaults import WRITE_MODES
from .errors import PrepError
from harness.provenance import library_versions, usable_cpus

from .manifest import FORMAT_VERSION, commit, current_manifest, fingerprint_of, sha256_file
from .sources import SPLITS, open_source
from .subset_lists import SubsetList, read_lists, resolve, train_lookup
from .subsets import SUBSET_FRACTIONS, label_subset, stratified_split, validation_list

log = logging.getLogger(__name__)

# ffcv's 'smart' mode without a threshold stores everything raw. With this one, images up to
# 64x64 (CIFAR, STL-10, Tiny-ImageNet) stay raw - exact and cheapest to decode - and larger ones
# are JPEG-compressed, where raw pixels would make the file ~10x bigger.
SMART_THRESHOLD = 64 * 64 * 3


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PrepOptions:
    """The options that shape the output files, hence the fingerprint."""
    write_mode: str = D.WRITE_MODE
    jpeg_quality: int = D.JPEG_QUALITY
    max_resolution: int | None = None
    seed: int = D.SEED
    split_from: str | None = None
    test_fraction: float = D.TEST_FRACTION
    val_fraction: float = D.VAL_FRACTION         # of each class of train, carved as validation
    val_max_per_class: int = D.VAL_MAX_PER_CLASS
    # (name, sha256 of the file) of each imported subset list: its contents, not its path,
    # shape the outputs, so an edited list re-prepares and a moved one does not.
    subset_lists: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.write_mode not in WRITE_MODES:
            raise PrepError(f"write_mode must be one of {', '.join(WRITE_MODES)}, "
                            f"not {self.write_mode!r}")
        if not _is_int(self.jpeg_quality) or not 1 <= self.jpeg_quality <= 100:
            raise PrepError(f"jpeg_quality must be an integer from 1 to 100, "
                            f"not {self.jpeg_quality!r}")
        if self.max_resolution is not None and (not _is_int(self.max_resolution)
                                                or self.max_resolution < 1):
            raise PrepError("max_resolution must be a positive integer (the longest side in "
                            f"pixels) or None to keep every size, not {self.max_resolution!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise PrepError(f"seed must be a non-negative integer, not {self.seed!r}")
        if self.split_from is not None and self.split_from not in SPLITS:
            raise PrepError(f"split_from must be one of {', '.join(SPLITS)} or None, "
                            f"not {self.split_from!r}")
        if (not isinstance(self.test_fraction, (int, float)) or isinstance(self.test_fraction, bool)
                or not 0 < self.test_fraction < 1):
            raise PrepError(f"test_fraction must be a number strictly between 0 and 1, "
                            f"not {self.test_fraction!r}")
        if (not isinstance(self.val_fraction, (int, float)) or isinstance(self.val_fraction, bool)
                or not 0 < self.val_fraction < 1):
            raise PrepError(f"val_fraction must be a number strictly between 0 and 1 (the share "
                            f"of each class's training images held out), not {self.val_fraction!r}")
        if not _is_int(self.val_max_per_class) or self.val_max_per_class < 1:
            raise PrepError(f"val_max_per_class must be a positive integer, not "
                            f"{self.val_max_per_class!r}")

    @property
    def smart_threshold(self) -> int | None:
        return SMART_THRESHOLD if self.write_mode == "smart" else None

    def recorded(self) -> dict:
        return {**asdict(self), "subset_lists": dict(self.subset_lists),
                "smart_threshold": self.smart_threshold}

    def image_field(self) -> RGBImageField:
        return RGBImageField(write_mode=self.write_mode, max_resolution=self.max_resolution,
                             jpeg_quality=self.jpeg_quality, smart_threshold=self.smart_threshold)


def prepare(source: str | Sequence[str], out: Path, *, max_resolution: int | None = None,
            write_mode: str = D.WRITE_MODE, jpeg_quality: int = D.JPEG_QUALITY,
            num_workers: int | None = None, strict: bool = False, split_from: str | None = None,
            test_fraction: float = D.TEST_FRACTION, seed: int = D.SEED,
            download_root: Path | None = None, progress: bool = True, force: bool = False,
            val_fraction: float = D.VAL_FRACTION, val_max_per_class: int = D.VAL_MAX_PER_CLASS,
            subset_lists: Mapping[str, str | Path] | None = None) -> dict:
    """Write `out/<split>.beton` for every split of `source`, label subsets and a manifest.

    source: an image folder (<root>/<split>/<class>/<image>), a .tar/.tar.gz/.tgz of one, or
    cifar10 / cifar100 / stl10 (downloaded through torchvision into download_root), or a list
    of those holding different splits (merged). Unreadable images are skipped and listed
    (strict=True: an error). split_from='val' splits that one labelled split into train/test,
    test_fraction per class. A validation list (val.txt) is carved from train, val_fraction of
    each class and at most val_max_per_class images, unless the source ships a val split
    beside train and test, which is then the validation split.
    subset_lists {name: file} imports published label subsets of train (data_prep.subset_lists):
    each replaces the seeded subset of its name (1pct, 10pct) or adds one, and val.txt is carved
    outside all of them. manifest["normalization"] holds the channel mean and std of the images
    fitting reads (train minus val.txt), which every loader normalises with.
    Returns the manifest; returns the existing one without rewriting when `out` already holds
    the same preparation (unless force).
    """
    started = time.monotonic()
    lists = read_lists(subset_lists)
    options = PrepOptions(write_mode, jpeg_quality, max_resolution, seed, split_from, test_fraction,
                          val_fraction, val_max_per_class,
                          tuple(sorted((name, lst.sha256) for name, lst in lists.items())))
    workers = usable_cpus() if num_workers is None else num_workers
    if not _is_int(workers) or workers < 1:
        raise PrepError(f"num_workers must be a positive integer or None (all cores), "
                        f"not {num_workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepError(f"output {out} exists and is not a folder: pass a folder path")

    src = open_source(source, download_root)
    described = src.describe()
    fingerprint = fingerprint_of(described["sha256"], options.recorded())
    if not force and (existing := current_manifest(out, fingerprint)) is not None:
        _check_strict(existing["skipped"], strict)
        log.info("%s is up to date (same source and options); force (--force) rewrites it", out)
        return existing

    listing = src.scan()
    _check_split_from(options.split_from, list(listing.splits))
    if listing.ignored:
        warnings.warn(f"ignored {len(listing.ignored)} file(s) that are not images "
                      f"({', '.join(sorted(images.IMAGE_EXTENSIONS))}) or not inside a "
                      f"<split>/<class>/ folder, e.g. {', '.join(listing.ignored[:5])}",
                      stacklevel=2)
    checked, skipped = _check_images(listing, workers, strict, progress, options.max_resolution)
    splits = _derive_splits(checked, listing.classes, options)
    imported = _import_subsets(lists, splits)
    label_of = {c: i for i, c in enumerate(listing.classes)}
    n_classes = len(listing.classes)
    # Carved before anything is written, so a class too small for it fails early; outside the
    # imported subsets, which a published list fixes and validation must not overlap.
    carved = None
    if "train" in splits and not _ships_validation(splits):
        train_labels = np.array([label_of[item.cls] for item, _ in splits["train"][0]])
        held = np.concatenate([ix for _, ix in imported.values()]) if imported else None
        carved = validation_list(train_labels, listing.classes, options.val_fraction,
                                 options.val_max_per_class, options.seed, exclude=held)

    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staged = out / f".partial-{os.getpid()}"
    try:
        staged.mkdir()
        split_entries, train_labels = {}, None
        for split, (pairs, from_split) in splits.items():
            items = [item for item, _ in pairs]
            labels = np.array([label_of[item.cls] for item in items], dtype=np.int64)
            sizes = [images.stored_size(m.height, m.width, options.max_resolution)
                     for _, m in pairs]
            beton = staged / f"{split}.beton"
            write_beton(beton, items, labels.tolist(), sizes, options.image_field(), workers,
                        progress)
            split_entries[split] = _split_entry(beton, labels, sizes, n_classes, from_split)
            if split == "train":
                train_labels = labels
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "classes": listing.classes,
            "splits": split_entries,
            "validation": _validation_entry(staged, carved, split_entries, train_labels,
                                            n_classes, options),
            "subsets": _write_subsets(staged, train_labels, n_classes, options.seed, carved,
                                      imported),
            "normalization": _normalization_entry(splits, carved),
            "source": described,
            "options": options.recorded(),
            "skipped": skipped,
            "ignored_files": len(listing.ignored),
            "versions": library_versions(),
            "seconds": round(time.monotonic() - started, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        commit(staged, out, manifest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("prepared %s in %s (%.1f s)", source, out, manifest["seconds"])
    return manifest


def _check_split_from(split_from: str | None, present: list[str]):
    if split_from is None:
        return
    if split_from not in present:
        raise PrepError(f"split_from={split_from!r}, but the source's splits are "
                        f"{', '.join(present)}: pass one of those")
    clash = sorted(({"train", "test"} & set(present)) - {split_from})
    if clash:
        raise PrepError(f"split_from={split_from!r} makes new train and test splits, but the "
                        f"source already has {', '.join(clash)}: drop split_from to use the "
                        "source's own splits, or remove the clashing split from the source")


def _check_strict(skipped: list[dict], strict: bool):
    if strict and skipped:
        listed = "; ".join(f"{s['path']} ({s['error']})" for s in skipped[:10])
        raise PrepError(f"{len(skipped)} unreadable image(s) with strict on: {listed}. Replace "
                        "or delete them, or run without strict (--strict) to skip them")


def _check_images(listing, workers: int, strict: bool, progress: bool,
                  max_resolution: int | None):
    """Decode every image once; keep (item, images.Inspected) pairs, list the unreadable ones."""
    items = [item for split_items in listing.splits.values() for item in split_items]
    results = images.inspect_all([item.data for item in items], workers, progress,
                                 max_resolution)
    kept = {split: [] for split in listing.splits}
    skipped = []
    for item, result in zip(items, results):
        if isinstance(result, str):
            skipped.append({"path": item.path, "error": result})
        else:
            kept[item.split].append((item, result))
    _check_strict(skipped, strict)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), listed in the manifest: "
                      + ", ".join(s["path"] for s in skipped[:5]), stacklevel=3)
    for split, pairs in kept.items():
        lost = sorted(set(listing.classes) - {item.cls for item, _ in pairs})
        if lost:
            raise PrepError(f"no readable image left in {', '.join(f'{split}/{c}' for c in lost)}: "
                            "every image there failed to decode; replace them or drop the class")
    return kept, skipped


def _derive_splits(kept: dict, classes: list[str], options: PrepOptions) -> dict:
    """Output split -> (its (item, Inspected) pairs, the source split they come from)."""
    derived = {split: (pairs, split) for split, pairs in kept.items()
               if split != options.split_from}
    if options.split_from is not None:
        pairs = kept[options.split_from]
        label_of = {c: i for i, c in enumerate(classes)}
        labels = np.array([label_of[item.cls] for item, _ in pairs])
        train, test = stratified_split(labels, classes, options.test_fraction, options.seed)
        derived["train"] = ([pairs[i] for i in train], options.split_from)
        derived["test"] = ([pairs[i] for i in test], options.split_from)
    return {split: derived[split] for split in SPLITS if split in derived}


def _split_entry(beton: Path, labels: np.ndarray, sizes: list[tuple[int, int]], n_classes: int,
                 from_split: str) -> dict:
    """The manifest's record of one .beton; image_size describes the stored (resized) images."""
    stored = np.array(sizes)
    size = {}
    for axis, name in enumerate(("height", "width")):
        size[f"min_{name}"] = int(stored[:, axis].min())
        size[f"max_{name}"] = int(stored[:, axis].max())
        size[f"mean_{name}"] = round(float(stored[:, axis].mean()), 2)
    return {"file": beton.name, "count": len(labels),
            "per_class": np.bincount(labels, minlength=n_classes).tolist(),
            "image_size": size, "source_split": from_split, "bytes": beton.stat().st_size}


def _ships_validation(splits: dict) -> bool:
    """A source with train, val and test uses its own val split for validation."""
    return {"train", "val", "test"} <= set(splits)


def _write_index_list(file: Path, indices: np.ndarray, labels: np.ndarray,
                      n_classes: int) -> dict:
    """Ascending indices into train.beton, one per line; its manifest fields."""
    file.write_text("".join(f"{i}\n" for i in indices))
    return {"file": file.name, "count": len(indices),
            "per_class": np.bincount(labels[indices], minlength=n_classes).tolist(),
            "bytes": file.stat().st_size, "sha256": sha256_file(file)}


def _validation_entry(staged: Path, carved: np.ndarray | None, split_entries: dict,
                      train_labels: np.ndarray | None, n_classes: int,
                      options: PrepOptions) -> dict | None:
    """The manifest's `validation`: val.txt carved from train, or the source's own val split."""
    if carved is not None:
        entry = _write_index_list(staged / "val.txt", carved, train_labels, n_classes)
        return {"split": "train", **entry, "fraction": options.val_fraction,
                "max_per_class": options.val_max_per_class}
    if "val" in split_entries and "train" in split_entries:
        val = split_entries["val"]
        return {"split": "val", "count": val["count"], "per_class": val["per_class"]}
    log.info("no train split: no validation list written")
    return None


def _import_subsets(lists: dict[str, SubsetList],
                    splits: dict) -> dict[str, tuple[SubsetList, np.ndarray]]:
    """Subset name -> (its list, ascending indices into train.beton), every name placed."""
    if not lists:
        return {}
    if "train" not in splits:
        raise PrepError(f"subset lists ({', '.join(lists)}) name train images, but the source "
                        f"has no train split (it has {', '.join(splits)}): drop them, or make "
                        "one with split_from (--split-from)")
    lookup = train_lookup([item for item, _ in splits["train"][0]])
    return {name: (listed, resolve(listed, lookup)) for name, listed in lists.items()}


def _write_subsets(staged: Path, train_labels: np.ndarray | None, n_classes: int,
                   seed: int, val: np.ndarray | None,
                   imported: dict[str, tuple[SubsetList, np.ndarray]]) -> dict:
    """subset_<name>.txt: ascending indices into train.beton, the seeded ones drawn outside
    val, the imported ones as listed (val was carved outside them); none without train."""
    if train_labels is None:
        log.info("no train split: no label subsets written")
        return {}
    subsets = {}
    for name in [*SUBSET_FRACTIONS, *(n for n in imported if n not in SUBSET_FRACTIONS)]:
        file = staged / f"subset_{name}.txt"
        if name in imported:
            listed, indices = imported[name]
            entry = _write_index_list(file, indices, train_labels, n_classes)
            # entry's sha256 is of subset_<name>.txt (checked on reading); this one of the list.
            subsets[name] = {**entry, "imported_from": str(listed.path),
                             "imported_sha256": listed.sha256}
        else:
            fraction = SUBSET_FRACTIONS[name]
            indices = label_subset(train_labels, n_classes, fraction, seed, exclude=val)
            subsets[name] = {**_write_index_list(file, indices, train_labels, n_classes),
                             "fraction": fraction}
    return subsets


def _normalization_entry(splits: dict, carved: np.ndarray | None) -> dict:
    """The manifest's `normalization`: per-channel mean and std, RGB in [0, 1], of the images
    fitting reads, at their stored size (measured by the check's decode pass).

    Those are train minus val.txt, or all of train where val is the source's own split. A
    source without a train split has nothing to fit on; it gets the statistics of all its
    images, so every manifest has some and no loader needs a fallback.
    """
    if "train" in splits:
        measured = [m for _, m in splits["train"][0]]
        if carved is not None:
            held_out = set(carved.tolist())
            measured = [m for i, m in enumerate(measured) if i not in held_out]
        of = "train minus val.txt" if carved is not None else "train"
    else:
        measured = [m for pairs, _ in splits.values() for _, m in pairs]
        of = "all splits (no train split)"
    mean, std = images.channel_stats(measured)
    return {"mean": mean, "std": std, "of": of, "images": len(measured),
            "pixels": sum(m.pixels for m in measured), "size": "stored (after max_resolution)"}


def _remove_abandoned_staging(out: Path):
    """Delete .partial-<pid> folders whose process is gone (killed runs cannot clean up)."""
    for folder in out.glob(".partial-*"):
        pid = folder.name.removeprefix(".partial-")
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
