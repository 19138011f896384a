"""Which images each role of a prepared data set reads, from its manifest.

    fitting     train minus the validation list: pretraining (by default), the online probe's
                training, every linear / kNN / fine-tuning fit
    validation  val.txt carved from train (or the source's own val split): everything that
                chooses - the online probe's per-epoch signal that ASHA stops on, a sweep's best
                trial, the fast linear probe's L2 penalty
    test        the test split: reported only, never read by anything that chooses

A `Part` is one .beton split and the indices into it (None: all of it). This module is the one
place these sets are derived; pretraining and evaluation both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PrepError
from .manifest import read_index_list

__all__ = ["Part", "fit_part", "validation_part", "subset_part", "test_part"]


@dataclass(frozen=True)
class Part:
    split: str
    indices: np.ndarray | None      # ascending indices into the split; None: the whole split

    def count(self, manifest: dict) -> int:
        return manifest["splits"][self.split]["count"] if self.indices is None \
            else len(self.indices)


def _validation(out: Path, manifest: dict) -> dict:
    entry = manifest.get("validation")
    if not entry:
        raise PrepError(f"{out} has no validation split (no train split to carve it from): "
                        "prepare a source with a train split")
    return entry


def validation_part(out: Path, manifest: dict) -> Part:
    entry = _validation(out, manifest)
    if entry["split"] != "train":  # the source's own val split
        return Part(entry["split"], None)
    return Part("train", read_index_list(out, entry))


def fit_part(out: Path, manifest: dict, *, include_validation: bool = False) -> Part:
    """The training images minus the validation list (all of train where val is its own split,
    or with include_validation)."""
    entry = _validation(out, manifest)
    if include_validation or entry["split"] != "train":
        return Part("train", None)
    held_out = read_index_list(out, entry)
    keep = np.ones(manifest["splits"]["train"]["count"], dtype=bool)
    keep[held_out] = False
    return Part("train", np.flatnonzero(keep))


def subset_part(out: Path, manifest: dict, name: str) -> Part:
    """A label subset of train (1pct, 10pct, or one imported from a published list), outside
    the validation list."""
    subsets = manifest.get("subsets", {})
    if name not in subsets:
        raise PrepError(f"{out} has no label subset {name!r} (it has {sorted(subsets) or 'none'}): "
                        "prepare it with `harness prep`, or name one it has")
    return Part("train", read_index_list(out, subsets[name]))


def test_part(out: Path, manifest: dict, split: str = "test") -> Part:
    if split not in manifest["splits"]:
        raise PrepError(f"{out} has no {split!r} split (it has {sorted(manifest['splits'])}): "
                        "prepare it with `harness prep --split-from` to make a seeded "
                        "train/test split")
    return Part(split, None)
