"""The backbone under evaluation: read from anything the harness writes, or freshly random.

`load_backbone(source)` accepts a checkpoint folder (`checkpoint_epochNNNNNN/`), its
`state.pt`, a run folder (its newest checkpoint) or an export folder (`backbone.pt` +
`export.json`), on local disk or at a URI (s3://...). Every path builds the architecture the
checkpoint says it was trained with and loads the weights strictly: weights of another
architecture are an error, not a partial load. `random_backbone(like, seed)` is the reference
every report carries: the same architecture with its initial weights, as pretraining starts
from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness import storage
from harness.checkpoint import STATE_FILE, checkpoint_part, latest_checkpoint, load_state
from harness.model import ARCHS, BarlowTwins, build_backbone

__all__ = ["Backbone", "load_backbone", "random_backbone"]


@dataclass
class Backbone:
    """A backbone and what is known of its training."""

    module: nn.Module
    feature_dim: int
    arch: str
    small_image_stem: bool
    resolution: int | None            # the pretraining crop size
    init: str                         # "pretrained" | "random"
    source: str | None                # the file or folder it came from
    epoch: int | None = None
    step: int | None = None
    config: dict | None = field(default=None, repr=False)   # the pretraining config

    def describe(self) -> dict:
        """The checkpoint part of an evaluation record."""
        return {"init": self.init, "path": self.source, "arch": self.arch,
                "small_image_stem": self.small_image_stem, "epoch": self.epoch,
                "step": self.step, "resolution": self.resolution, "config": self.config}


def _load_strict(module: nn.Module, weights: dict, arch: str, where: Path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{where}: the weights do not fit a {arch} backbone, so they come from "
                         f"another architecture than the checkpoint records ({first}). Evaluate "
                         "the checkpoint its own run wrote, or re-export it with `harness "
                         "export`") from None


def _from_state(path: Path) -> Backbone:
    state = load_state(path)
    cfg = state["config"]
    m = cfg["model"]
    if m["arch"] not in ARCHS:
        raise ValueError(f"{path}: unknown architecture {m['arch']!r} in its config")
    twins = BarlowTwins.from_model_config(m)
    _load_strict(twins, state["model"], m["arch"], path)
    return Backbone(twins.backbone, twins.feature_dim, m["arch"], m["small_image_stem"],
                    cfg["data"]["resolution"], "pretrained", str(path), state["epoch"],
                    state["step"], cfg)


def _from_export(folder: Path) -> Backbone:
    info = json.loads((folder / "export.json").read_text())
    if info.get("arch") not in ARCHS:
        raise ValueError(f"{folder / 'export.json'}: unknown architecture {info.get('arch')!r}")
    module, dim = build_backbone(info["arch"], small_image_stem=info["small_image_stem"])
    weights = torch.load(folder / "backbone.pt", map_location="cpu", weights_only=True)
    _load_strict(module, weights, info["arch"], folder / "backbone.pt")
    config = info.get("config")
    return Backbone(module, dim, info["arch"], info["small_image_stem"], info.get("resolution"),
                    "pretrained", str(folder), info.get("epoch"), info.get("step"), config)


def load_backbone(source: Path | str, *, expect_arch: str | None = None) -> Backbone:
    """The pretrained backbone at `source` (see the module docstring), a local path or a URI
    (harness.storage: only the part it needs is fetched); CPU, eval mode."""
    if storage.is_uri(source):
        part = checkpoint_part(str(source))
        with storage.local_copy(part) as local:
            backbone = load_backbone(local, expect_arch=expect_arch)
        backbone.source = part
        return backbone
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a checkpoint folder, its "
                                f"{STATE_FILE}, a run folder or an export folder")
    if path.is_dir() and (path / "export.json").is_file() and (path / "backbone.pt").is_file():
        backbone = _from_export(path)
    elif path.is_dir() and not (path / STATE_FILE).is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"{path} holds no checkpoint (checkpoint_epoch*/{STATE_FILE}) "
                                    "and no export (backbone.pt + export.json)")
        backbone = _from_state(newest)
    else:
        backbone = _from_state(path)
    if expect_arch is not None and backbone.arch != expect_arch:
        raise ValueError(f"{path} holds a {backbone.arch} backbone, not the {expect_arch} "
                         "asked for")
    backbone.module.eval()
    return backbone


def random_backbone(like: Backbone, seed: int) -> Backbone:
    """Same architecture and stem as `like`, with its initial (random) weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, dim = build_backbone(like.arch, small_image_stem=like.small_image_stem)
    module.eval()
    return Backbone(module, dim, like.arch, like.small_image_stem, like.resolution, "random",
                    None, 0, 0, like.config)
