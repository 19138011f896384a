"""What a pretraining run saves, how it is read back, and the export that leaves the harness.

A checkpoint is a folder (Ray Train's unit), `<run dir>/checkpoint_epochNNNNNN/`, holding
`state.pt`: the twin network (backbone + projector, without the DDP wrapper), the LARS state,
the schedule position (optimizer step and completed epochs), the online probe's head and
optimizer, and the configuration that made it; and that configuration again as `config.json`,
a few kB that a resume checks without fetching the weights from a bucket. Only rank 0 writes
it: under DDP every rank holds the same weights.

The export is what evaluation and other code use: `backbone.pt`, a plain torchvision state dict
(`torchvision.models.resnet50().load_state_dict(sd, strict=False)` reports only fc.* missing;
with the small-image stem, conv1 is 3x3 and loads into a model built with the same stem),
`projector.pt`, and `export.json` saying which architecture they belong to.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import torch
from torch import nn

from harness import storage
from harness.model import BarlowTwins, backbone_state_dict

__all__ = ["STATE_FILE", "CONFIG_FILE", "checkpoint_dir_name", "save_state", "load_state",
           "saved_config", "latest_checkpoint", "checkpoint_part",
           "write_export", "export_checkpoint", "export_command"]

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
_PREFIX = "checkpoint_epoch"


def checkpoint_dir_name(epoch: int) -> str:
    """Zero-padded so that names sort in training order."""
    return f"{_PREFIX}{epoch:06d}"


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)  # DistributedDataParallel keeps the model here


def save_state(directory: Path | str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               probe: dict | None, step: int, epoch: int, config: dict) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "probe": probe, "step": step, "epoch": epoch, "config": config}, path)
    (path.parent / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def saved_config(checkpoint: Path | str) -> dict:
    """The configuration a checkpoint folder (a path or a URI) was made with: its config.json,
    or, in a checkpoint written before there was one, the config inside state.pt (read
    through mmap, so of a local file only the config's bytes; a URI's is fetched whole)."""
    text = storage.read_text(storage.join(str(checkpoint), CONFIG_FILE))
    if text is not None:
        return json.loads(text)
    with storage.local_copy(storage.join(str(checkpoint), STATE_FILE)) as state:
        return torch.load(state, map_location="cpu", weights_only=True, mmap=True)["config"]


def load_state(checkpoint: Path | str, map_location: torch.device | str = "cpu") -> dict:
    """A checkpoint folder (or its state.pt) -> the dict save_state wrote."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a checkpoint folder written "
                                f"by `harness pretrain` (holding {STATE_FILE})")
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(run: Path | str) -> Path | str | None:
    """The newest checkpoint folder of a run (storage_path/name), or None; of a run stored at a
    URI (harness.storage), that folder's URI."""
    if storage.is_uri(run):
        found = [n for n in storage.list_dirs(run) if n.startswith(_PREFIX)
                 and storage.exists(storage.join(str(run), n, STATE_FILE))]
        return storage.join(str(run), found[-1]) if found else None
    found = sorted(p for p in Path(run).glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def checkpoint_part(uri: str) -> str:
    """What of a URI to fetch for one checkpoint: the URI itself where it is a checkpoint or
    export folder or a state.pt, else the newest checkpoint of the run it names (never the
    whole run)."""
    if storage.basename(uri).endswith(".pt") or any(
            storage.exists(storage.join(uri, name)) for name in ("export.json", STATE_FILE)):
        return uri
    newest = latest_checkpoint(uri)
    if newest is None:
        raise FileNotFoundError(f"{uri} holds no checkpoint ({_PREFIX}*/{STATE_FILE}) and no "
                                "export (backbone.pt + export.json)")
    return str(newest)


def write_export(model: nn.Module, config: dict, out: Path | str, *, step: int, epoch: int,
                 source: str | None = None) -> Path:
    """backbone.pt, projector.pt and export.json in `out`; returns `out`."""
    model = _unwrap(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(backbone_state_dict(model), out / "backbone.pt")
    projector = {k: v.detach().cpu().clone() for k, v in model.projector.state_dict().items()}
    torch.save(projector, out / "projector.pt")
    m = config["model"]
    info = {
        "arch": m["arch"], "small_image_stem": m["small_image_stem"], "projector": m["projector"],
        "feature_dim": model.feature_dim, "embedding_dim": model.embedding_dim,
        "epoch": epoch, "step": step, "checkpoint": source,
        "resolution": config["data"]["resolution"],
        "load": f"torchvision.models.{m['arch']}().load_state_dict(torch.load('backbone.pt'), "
                "strict=False): only fc.* missing" + (
                    "; conv1 is the 3x3 small-image stem: build the model with "
                    "harness.model.build_backbone(arch, small_image_stem=True)"
                    if m["small_image_stem"] else ""),
        "config": config,  # the training config: evaluation reads the data set and resolution
    }
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def export_checkpoint(checkpoint: Path | str, out: Path | str) -> Path:
    """`harness export`: a checkpoint folder, its state.pt, or a run folder (its newest); each
    a local path or a URI (harness.storage)."""
    if storage.is_uri(checkpoint):
        checkpoint = checkpoint_part(str(checkpoint))
        with storage.local_copy(checkpoint) as local:
            exported = export_checkpoint(local, out)
        info = json.loads((exported / "export.json").read_text())
        (exported / "export.json").write_text(json.dumps({**info, "checkpoint": str(checkpoint)},
                                                         indent=2) + "\n")
        return exported
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and not (checkpoint / STATE_FILE).is_file():
        newest = latest_checkpoint(checkpoint)
        if newest is None:
            raise FileNotFoundError(f"{checkpoint} holds no checkpoint ({_PREFIX}*/{STATE_FILE})")
        checkpoint = newest
    state = load_state(checkpoint)
    m = state["config"]["model"]
    model = BarlowTwins.from_model_config(m)
    model.load_state_dict(state["model"])
    return write_export(model, state["config"], out, step=state["step"], epoch=state["epoch"],
                        source=str(checkpoint.resolve()))


def export_command(args: Namespace) -> int:
    """`harness export CKPT --out DIR`."""
    out = export_checkpoint(args.checkpoint, Path(args.out))
    info = json.loads((out / "export.json").read_text())
    print(f"harness export: {info['arch']} backbone (epoch {info['epoch']}, step {info['step']}) "
          f"-> {out / 'backbone.pt'}, projector {info['projector']} -> {out / 'projector.pt'}")
    return 0
