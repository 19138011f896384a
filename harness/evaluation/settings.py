"""Evaluation settings: one frozen, validated dataclass (the `eval:` section of a sweep, and
`harness eval --set key=value`).

Defaults are the paper's protocols (shared/reference/barlow-twins.md): the linear probe's
100 epochs of SGD at lr 0.3 with weight decay 1e-6 and crop + flip, the semi-supervised
fine-tuning's 20 epochs at backbone lr 0.005 / classifier lr 0.5 without weight decay, and the
common SSL benchmarks' weighted kNN (k = 20 and 200, temperature 0.07). `linear_mode: fast`
fits the same linear classifier on cached centre-crop features instead (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.config.schema import ConfigError, Section, build_section, fail, require_positive

__all__ = ["EvalSettings", "PROTOCOLS", "LINEAR_MODES", "parse_protocols"]

PROTOCOLS = ("linear", "knn", "semi", "transfer")
LINEAR_MODES = ("fast", "paper")


def parse_protocols(names) -> tuple[str, ...]:
    """'linear,knn' or ['linear', 'knn'] -> ('linear', 'knn'), each one known, none twice."""
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    out = []
    for name in names:
        if name not in PROTOCOLS:
            raise ConfigError(f"unknown evaluation protocol {name!r}; choose from "
                              f"{', '.join(PROTOCOLS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"no evaluation protocol given; choose from {', '.join(PROTOCOLS)}")
    return tuple(out)


@dataclass(frozen=True)
class EvalSettings(Section):
    SECTION: ClassVar[str] = "eval"
    # Images are resized to the resolution the backbone was trained at, unless set here.
    resolution: int | None = None
    batch_size: int = 256
    # A seeded, class-balanced sample of each part instead of all of it (a CPU cannot afford
    # 50,000 forward passes per sweep trial). null: all of it. train: the train split minus its
    # validation list; val: that list (what chooses reads it); test: test_split (reported only).
    train_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    test_split: str = "test"
    seed: int = 0
    loader_workers: int = 2
    knn_k: str = "20,200"
    knn_temperature: float = 0.07
    linear_mode: str = "fast"
    # fast mode: L2 penalty of the logistic regression on standardised features; null picks
    # it from 1e-6 .. 1e-1 by accuracy on the validation list.
    linear_l2: float | None = None
    # paper mode: the authors' evaluate.py.
    linear_epochs: int = 100
    linear_lr: float = 0.3
    linear_weight_decay: float = 1.0e-6
    linear_momentum: float = 0.9
    semi_subsets: str = "1pct,10pct"
    semi_epochs: int = 20
    semi_lr_backbone: float = 0.005
    semi_lr_head: float = 0.5
    semi_weight_decay: float = 0.0

    def __post_init__(self):
        self._check_types()
        require_positive(self, "batch_size", "loader_workers", "knn_temperature", "linear_epochs",
                  "linear_lr", "semi_epochs", "semi_lr_head")
        if self.resolution is not None and not 8 <= self.resolution <= 1024:
            fail(self._key("resolution"), f"must lie in [8, 1024] pixels, got {self.resolution}")
        for key in ("train_images", "val_images", "test_images"):
            value = getattr(self, key)
            if value is not None and value < 2:
                fail(self._key(key), "must be >= 2, or null for the whole split")
        if self.linear_mode not in LINEAR_MODES:
            fail(self._key("linear_mode"), f"{self.linear_mode!r}: choose one of {LINEAR_MODES}")
        if self.linear_l2 is not None and self.linear_l2 < 0:
            fail(self._key("linear_l2"), "must be >= 0, or null to choose it on held-out data")
        if min(self.linear_weight_decay, self.semi_weight_decay, self.semi_lr_backbone) < 0:
            fail(self._key("semi_lr_backbone"), "learning rates and weight decays must be >= 0")
        if not 0 <= self.linear_momentum < 1:
            fail(self._key("linear_momentum"), f"must lie in [0, 1), got {self.linear_momentum}")
        self.knn_ks()
        self.semi_subset_names()

    def knn_ks(self) -> tuple[int, ...]:
        try:
            ks = tuple(int(k) for k in self.knn_k.replace(" ", "").split(","))
        except ValueError:
            fail(self._key("knn_k"), f"{self.knn_k!r}: expected comma-separated integers, "
                                      "e.g. 20,200")
        if not ks or min(ks) < 1:
            fail(self._key("knn_k"), f"{self.knn_k!r}: every k must be >= 1")
        return ks

    def semi_subset_names(self) -> tuple[str, ...]:
        names = tuple(s for s in self.semi_subsets.replace(" ", "").split(",") if s)
        if not names:
            fail(self._key("semi_subsets"), "name at least one label subset, e.g. 1pct,10pct")
        return names

    @classmethod
    def from_dict(cls, raw: dict) -> EvalSettings:
        return build_section(cls, raw, "eval.")
