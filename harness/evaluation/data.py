"""The labelled data an evaluation reads: one `harness prep` folder, checked before any work.

`EvalData.open(data_dir, settings, resolution)` reads the manifest and the labels of the train
and test splits (from the .beton's label column: no image is decoded), checks the data set fits
the evaluation, and draws the seeded class-balanced samples `eval.train_images` /
`eval.test_images` ask for. Failures are ValueErrors that name the folder and what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep import PrepError, read_manifest
from harness.data import beton_path
from harness.evaluation.settings import EvalSettings

__all__ = ["EvalData", "beton_labels", "balanced_sample", "source_digests", "indices_digest"]

# Upsampling beyond this factor invents detail the backbone never saw; ask for a resolution.
_MAX_UPSCALE = 4.0


def beton_labels(path: Path) -> np.ndarray:
    """The integer labels of every sample of a .beton, in order, without decoding images."""
    from ffcv.reader import Reader

    return np.asarray(Reader(str(path)).metadata["f1"], dtype=np.int64)


def balanced_sample(labels: np.ndarray, wanted: int | None, seed: int) -> np.ndarray | None:
    """Ascending indices of about `wanted` images, equally many per class (seeded); None: all."""
    if wanted is None or wanted >= len(labels):
        return None
    classes = np.unique(labels)
    per_class = max(1, wanted // len(classes))
    rng = np.random.default_rng([seed, 7])
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picks))


def indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(indices, dtype=np.int64)).tobytes()).hexdigest()


def source_digests(manifest: dict) -> set[str]:
    """The checksums of the sources a prepared data set was made from (each merged part)."""
    source = manifest.get("source", {})
    parts = source.get("parts") or [source]
    return {p["sha256"] for p in parts if p.get("sha256")}


@dataclass
class EvalData:
    data_dir: Path
    manifest: dict
    name: str
    train_path: Path
    test_path: Path
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_indices: np.ndarray | None        # None: the whole split
    test_indices: np.ndarray | None
    resolution: int

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    def count(self, split: str) -> int:
        labels, idx = ((self.train_labels, self.train_indices) if split == "train"
                       else (self.test_labels, self.test_indices))
        return len(labels) if idx is None else len(idx)

    def labels_of(self, split: str) -> np.ndarray:
        labels, idx = ((self.train_labels, self.train_indices) if split == "train"
                       else (self.test_labels, self.test_indices))
        return labels if idx is None else labels[idx]

    def subset_indices(self, subset: str) -> np.ndarray:
        """A label-subset list of the train split, as `harness prep` wrote it."""
        subsets = self.manifest.get("subsets", {})
        if subset not in subsets:
            raise ValueError(f"{self.data_dir} has no label subset {subset!r} (it has "
                             f"{sorted(subsets) or 'none'}): prepare it with `harness prep`, or "
                             "set eval.semi_subsets to the subsets it has")
        path = self.data_dir / subsets[subset]["file"]
        if not path.is_file():
            raise ValueError(f"{path} is missing: the subset list of {self.data_dir} was "
                             "deleted; run `harness prep ... --force` to write it again")
        indices = np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
        if len(indices) != subsets[subset]["count"] or (len(indices) and
                                                        indices.max() >= len(self.train_labels)):
            raise ValueError(f"{path} does not match {self.data_dir}'s manifest (count or "
                             "range): run `harness prep ... --force`")
        return indices

    @classmethod
    def open(cls, data_dir: Path | str, settings: EvalSettings, resolution: int) -> EvalData:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir} does not exist: give a folder written by "
                                    "`harness prep`")
        try:
            manifest = read_manifest(data_dir)
        except PrepError as err:
            raise ValueError(str(err)) from None
        splits = manifest["splits"]
        for key in ("train_split", "test_split"):
            split = getattr(settings, key)
            if split not in splits:
                raise ValueError(f"{data_dir} has no {split!r} split (it has {sorted(splits)}): "
                                 f"set eval.{key}, or prepare it with `harness prep "
                                 "--split-from` to make a seeded train/test split")
        classes = manifest["classes"]
        if len(classes) < 2:
            raise ValueError(f"{data_dir} has {len(classes)} class(es): a classifier needs >= 2")
        train_counts = splits[settings.train_split]["per_class"]
        empty = [c for c, n in zip(classes, train_counts) if n == 0]
        if empty:
            raise ValueError(f"{data_dir}: classes {empty[:5]} have no {settings.train_split} "
                             "images, so no classifier can learn them; prepare the data set "
                             "with images of every class in both splits")
        sizes = [splits[s]["image_size"] for s in (settings.train_split, settings.test_split)]
        smallest = min(min(size["min_height"], size["min_width"]) for size in sizes)
        if resolution > _MAX_UPSCALE * smallest:
            raise ValueError(f"{data_dir} holds images as small as {smallest} px: evaluating at "
                             f"{resolution} px would upsample them more than {_MAX_UPSCALE:g}x. "
                             "Set eval.resolution (--resolution) near the images' size")
        train_path = beton_path(data_dir, settings.train_split)
        test_path = beton_path(data_dir, settings.test_split)
        train_labels, test_labels = beton_labels(train_path), beton_labels(test_path)
        return cls(data_dir, manifest, data_dir.name, train_path, test_path, train_labels,
                   test_labels, balanced_sample(train_labels, settings.train_images, settings.seed),
                   balanced_sample(test_labels, settings.test_images, settings.seed + 1),
                   resolution)

    def describe(self) -> dict:
        return {"dir": str(self.data_dir), "name": self.name,
                "fingerprint": self.manifest["fingerprint"], "classes": self.num_classes,
                "train_images": self.count("train"), "test_images": self.count("test"),
                "resolution": self.resolution}
