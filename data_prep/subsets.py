"""Seeded, class-balanced index sets: the validation list, the 1% / 10% label subsets and the
train/test split.

Each class draws from its own generator, `np.random.default_rng([seed, purpose, label])`, over its
images in listing order (sorted by class, then path). Results depend only on the seed and the
per-class counts, never on the machine, the worker count or the other classes' draws.

The validation list is carved from train first (10% of each class, at most 100 images, by
default): everything that chooses (the online probe's ASHA signal, the best trial, a penalty)
reads it, and nothing trains on it by default. The label subsets are then drawn from the rest
of train, the first k of one permutation per class, so the 1% subset lies inside the 10% one;
their sizes are fractions of the whole class, as the paper's 1% of ImageNet is.

A subset imported from a published list (data_prep.subset_lists) replaces the seeded one of its
name; the validation list is then carved from the images outside every imported list, so the
two never overlap, and the seeded subsets left are drawn outside validation as before.
"""

import numpy as np

from .errors import PrepError

# The semi-supervised protocol of SimCLR / Barlow Twins: fine-tune on 1% and 10% of the labels.
SUBSET_FRACTIONS = {"1pct": 0.01, "10pct": 0.10}
_SPLIT, _SUBSET, _VAL = 0, 1, 2  # keep the split's, subsets' and val's random streams apart


def _class_permutation(seed: int, purpose: int, label: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, purpose, label]).permutation(n)


def _indices_by_class(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(n_classes)]


def subset_size(fraction: float, n: int) -> int:
    """Images a class contributes to a subset: round(fraction * n), but never none."""
    return max(1, round(fraction * n))


def label_subset(labels: np.ndarray, n_classes: int, fraction: float, seed: int,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """Ascending indices (into `labels`) of a class-balanced `fraction` of the images, none of
    them in `exclude` (the validation list)."""
    excluded = np.zeros(len(labels), dtype=bool)
    if exclude is not None:
        excluded[exclude] = True
    picks = []
    for label, idx in enumerate(_indices_by_class(labels, n_classes)):
        pool = idx[~excluded[idx]]
        order = _class_permutation(seed, _SUBSET, label, len(pool))
        picks.append(pool[order[:min(len(pool), subset_size(fraction, len(idx)))]])
    return np.sort(np.concatenate(picks))


def validation_size(n: int, fraction: float, max_per_class: int) -> int:
    """Images of a class of `n` that go to validation: round(fraction * n), 1 to max_per_class."""
    return min(max_per_class, max(1, round(fraction * n)))


def validation_list(labels: np.ndarray, classes: list[str], fraction: float, max_per_class: int,
                    seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Ascending indices (into the train split's `labels`) of the validation images, none of
    them in `exclude` (imported subsets). A class's share is of all its images; without
    `exclude` the draw is the same as ever."""
    excluded = np.zeros(len(labels), dtype=bool)
    if exclude is not None:
        excluded[exclude] = True
    picks = []
    for label, idx in enumerate(_indices_by_class(labels, len(classes))):
        n_val = validation_size(len(idx), fraction, max_per_class)
        if n_val >= len(idx):
            raise PrepError(f"class {classes[label]} has {len(idx)} training image(s): carving "
                            f"{n_val} for validation leaves none to train on; add images, or "
                            "ship a val split beside train and test")
        pool = idx[~excluded[idx]]
        if n_val > len(pool):
            raise PrepError(f"class {classes[label]}: the imported subset list(s) hold "
                            f"{len(idx) - len(pool)} of its {len(idx)} training images, leaving "
                            f"{len(pool)} outside them for its {n_val} validation images; pass a "
                            "smaller val_fraction (--val-fraction) or val_max_per_class, or "
                            "import a smaller list")
        order = _class_permutation(seed, _VAL, label, len(pool))
        picks.append(pool[order[:n_val]])
    return np.sort(np.concatenate(picks))


def stratified_split(labels: np.ndarray, classes: list[str], test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending (train, test) indices with round(test_fraction * n_c) test images per class."""
    train, test = [], []
    for label, idx in enumerate(_indices_by_class(labels, len(classes))):
        n_test = round(test_fraction * len(idx))
        if n_test in (0, len(idx)):
            empty = "test" if n_test == 0 else "train"
            raise PrepError(f"class {classes[label]} has {len(idx)} image(s): test_fraction="
                            f"{test_fraction} leaves its {empty} part empty; use a test_fraction "
                            "nearer 0.5 or a source with more images per class")
        order = _class_permutation(seed, _SPLIT, label, len(idx))
        test.append(idx[order[:n_test]])
        train.append(idx[order[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
