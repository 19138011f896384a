"""The labelled data an evaluation reads: one `harness prep` folder, checked before any work.

`EvalData.open(data_dir, settings, resolution)` reads the manifest and the labels of its three
parts (from the .beton's label column: no image is decoded), checks the data set fits the
evaluation, and draws the seeded class-balanced samples `eval.train_images` /
`eval.val_images` / `eval.test_images` ask for. The parts are data_prep.holdout's roles:

    train   the train split minus its validation list: every fit (linear heads, kNN's bank,
            fine-tuning on a label subset, which prep drew outside the validation list)
    val     the validation list: what chooses (the fast probe's L2 penalty, a sweep's best trial)
    test    the test split (eval.test_split): reported only

Failures are ValueErrors that name the folder and what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep import PrepError, fit_part, read_manifest, subset_part, test_part, validation_part
from harness.data import beton_path
from harness.evaluation.settings import EvalSettings

__all__ = ["EvalData", "EvalPart", "ROLES", "beton_labels", "balanced_sample", "source_digests",
           "indices_digest"]

ROLES = ("train", "val", "test")
# Upsampling beyond this factor invents detail the backbone never saw; ask for a resolution.
_MAX_UPSCALE = 4.0


def beton_labels(path: Path) -> np.ndarray:
    """The integer labels of every sample of a .beton, in order, without decoding images."""
    from ffcv.reader import Reader

    return np.asarray(Reader(str(path)).metadata["f1"], dtype=np.int64)


def balanced_sample(labels: np.ndarray, wanted: int | None, seed: int) -> np.ndarray | None:
    """Ascending positions of about `wanted` of `labels`, equally many per class (seeded);
    None: all."""
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
class EvalPart:
    """The images of one role: `indices` into the .beton at `path` (all of it: None)."""

    role: str
    split: str
    path: Path
    indices: np.ndarray | None
    labels: np.ndarray                  # the labels of exactly these images, in order

    def __len__(self) -> int:
        return len(self.labels)


def _part(data_dir: Path, role: str, split: str, indices: np.ndarray | None, wanted: int | None,
          seed: int, cache: dict) -> EvalPart:
    path = beton_path(data_dir, split)
    if split not in cache:
        cache[split] = beton_labels(path)
    labels = cache[split] if indices is None else cache[split][indices]
    picked = balanced_sample(labels, wanted, seed)
    if picked is not None:
        indices = picked if indices is None else indices[picked]
        labels = labels[picked]
    return EvalPart(role, split, path, indices, labels)
@dataclass
class EvalData:
    data_dir: Path
    manifest: dict
    name: str
    parts: dict[str, EvalPart]          # ROLES -> its images
    resolution: int

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    def part(self, role: str) -> EvalPart:
        return self.parts[role]

    def count(self, role: str) -> int:
        return len(self.parts[role])

    def subset_indices(self, subset: str) -> np.ndarray:
        """A label-subset list of the train split (outside the validation list), as prepared."""
        try:
            return subset_part(self.data_dir, self.manifest, subset).indices
        except PrepError as err:
            raise ValueError(f"{err}; or set eval.semi_subsets to the subsets it has") from None

    @classmethod
    def open(cls, data_dir: Path | str, settings: EvalSettings, resolution: int) -> EvalData:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir} does not exist: give a folder written by "
                                    "`harness prep`")
        try:
            manifest = read_manifest(data_dir)
            if "train" not in manifest["splits"]:
                raise PrepError(f"{data_dir} has no train split (it has "
                                f"{sorted(manifest['splits'])}): every protocol fits on it")
            roles = {"train": fit_part(data_dir, manifest),
                     "val": validation_part(data_dir, manifest),
                     "test": test_part(data_dir, manifest, settings.test_split)}
        except PrepError as err:
            raise ValueError(f"{err} (or set eval.test_split)" if "split" in str(err)
                             else str(err)) from None
        splits = manifest["splits"]
        classes = manifest["classes"]
        if len(classes) < 2:
            raise ValueError(f"{data_dir} has {len(classes)} class(es): a classifier needs >= 2")
        sizes = [splits[p.split]["image_size"] for p in roles.values()]
        smallest = min(min(size["min_height"], size["min_width"]) for size in sizes)
        if resolution > _MAX_UPSCALE * smallest:
            raise ValueError(f"{data_dir} holds images as small as {smallest} px: evaluating at "
                             f"{resolution} px would upsample them more than {_MAX_UPSCALE:g}x. "
                             "Set eval.resolution (--resolution) near the images' size")
        wanted = {"train": settings.train_images, "val": settings.val_images,
                  "test": settings.test_images}
        cache: dict = {}
        parts = {role: _part(data_dir, role, p.split, p.indices, wanted[role],
                             settings.seed + i, cache)
                 for i, (role, p) in enumerate(roles.items())}
        counts = np.bincount(parts["train"].labels, minlength=len(classes))
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise ValueError(f"{data_dir}: classes {empty[:5]} have no training images (train "
                             "minus its validation list), so no classifier can learn them; "
                             "prepare the data set with images of every class in every split")
        return cls(data_dir, manifest, data_dir.name, parts, resolution)

    def describe(self) -> dict:
        return {"dir": str(self.data_dir), "name": self.name,
                "fingerprint": self.manifest["fingerprint"], "classes": self.num_classes,
                "train_images": self.count("train"), "val_images": self.count("val"),
                "test_images": self.count("test"), "test_split": self.parts["test"].split,
                "val_from": self.parts["val"].split, "resolution": self.resolution,
                # What the loaders standardise this data set's images with (its own stats).
                "normalization": self.manifest["normalization"]}
