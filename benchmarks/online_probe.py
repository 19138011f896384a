"""Online-probe heads side by side on one pretraining run: which stays stable?

One Barlow Twins run of a recipe (default: the CPU demo recipe, experiments/cifar10_demo.yaml,
on the training split minus its validation list), built from the worker's own pieces
(harness.pretrain.step), without Ray. Every step, each probe head is trained on the same detached
backbone features of view A, with its own optimizer; after each epoch each is measured on the
validation list. A head whose training loss stays above ln(C) (a uniform guess) or rises while
the backbone improves does not measure anything.

    .venv/bin/python benchmarks/online_probe.py --data runs/main/data/cifar10 [--epochs 4]
"""

import argparse
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data_prep import read_manifest, validation_part
from harness.config import load_config
from harness.data import beton_path, eval_loader, two_view_loader
from harness.pretrain.probe import OnlineProbe
from harness.provenance import hardware, library_versions
from harness.pretrain.step import TwinStep, build_model, build_optimizer

REPO = Path(__file__).resolve().parents[1]


def _heads(dim: int, classes: int) -> dict[str, tuple[nn.Module, str, float]]:
    """name -> (head, optimizer, lr): the probe before and after, and the neighbours."""
    def bn():
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes))
    return {"raw features, SGD lr 0.1 (before)": (nn.Linear(dim, classes), "sgd", 0.1),
            "BatchNorm, SGD lr 0.1": (bn(), "sgd", 0.1),
            "BatchNorm, SGD lr 0.01": (bn(), "sgd", 0.01),
            "BatchNorm, Adam lr 1e-3": (bn(), "adam", 1e-3),
            "unit features, SGD lr 0.1": (OnlineProbe.head(dim, classes), "sgd", 0.1),
            "unit features, SGD lr 1 (harness)": (OnlineProbe.head(dim, classes), "sgd", 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a `harness prep` folder")
    parser.add_argument("--config", default=str(REPO / "experiments" / "cifar10_demo.yaml"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"data.dir={args.data}", "data.subset=null",
                                    f"epochs={args.epochs}", "probe.enabled=false"])
    manifest = read_manifest(Path(args.data))
    training, val = cfg.data.training_part(manifest), validation_part(Path(args.data), manifest)
    cpu = torch.device("cpu")
    loader = two_view_loader(beton_path(args.data, training.split), batch_size=cfg.batch_size,
                             resolution=cfg.data.resolution, views=cfg.data.view_augments(),
                             device=cpu, num_workers=args.threads, seed=cfg.seed,
                             indices=training.indices, distributed=False)
    val_loader = eval_loader(beton_path(args.data, val.split), batch_size=256,
                             resolution=cfg.data.resolution, device=cpu,
                             num_workers=args.threads, indices=val.indices, distributed=False)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, world_size=1, device=cpu)
    twin_step = TwinStep(model, build_optimizer(model, cfg), cfg, steps_per_epoch=len(loader),
                         device=cpu)
    heads = {}
    for name, (head, kind, lr) in _heads(model.feature_dim, len(manifest["classes"])).items():
        opt = (torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9) if kind == "sgd"
               else torch.optim.Adam(head.parameters(), lr=lr))
        heads[name] = (head, opt)
    features = {}

    def keep_view_a(module, inputs, out) -> None:  # the first backbone call of a step is A's
        features.setdefault("a", out.detach())     # (returning None leaves the output alone)

    hook = model.backbone.register_forward_hook(keep_view_a)
    rows, step = [], 0
    for epoch in range(cfg.epochs):
        loader.loader.next_epoch = epoch
        model.train()
        sums = dict.fromkeys(heads, 0.0)
        for batch in loader:
            features.clear()
            result = twin_step(batch.view_a, batch.view_b, batch.label, step)
            for name, (head, opt) in heads.items():
                head.train()
                loss = F.cross_entropy(head(features["a"]), batch.label)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums[name] += loss.item()
            step += 1
        hook.remove()
        model.eval()
        with torch.no_grad():
            pairs = [(model.backbone(x), y) for x, y in val_loader]
            val_f, val_y = torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])
            for name, (head, _) in heads.items():
                head.eval()
                rows.append((epoch + 1, name, sums[name] / len(loader),
                             float((head(val_f).argmax(1) == val_y).float().mean())))
        hook = model.backbone.register_forward_hook(keep_view_a)
        print(f"epoch {epoch + 1}/{cfg.epochs}: twin loss {float(result.total):.3g}",
              file=sys.stderr, flush=True)

    print(f"\n{cfg.model.arch}, {cfg.data.resolution} px, batch {cfg.batch_size}, "
          f"{training.count(manifest)} training / {val.count(manifest)} val images of "
          f"{args.data}, {cfg.epochs} epochs ({len(loader)} steps each); uniform guess: "
          f"ln({len(manifest['classes'])}) = {math.log(len(manifest['classes'])):.3f}")
    print(f"machine: {platform.processor() or platform.machine()}, {hardware()['cpus']} CPUs, "
          f"threads {args.threads}; versions: {library_versions()}\n")
    names = list(heads)
    print("| head | " + " | ".join(f"epoch {e} train loss / val top-1"
                                   for e in range(1, cfg.epochs + 1)) + " |")
    print("|---|" + "---:|" * cfg.epochs)
    for name in names:
        cells = [f"{loss:.3f} / {100 * acc:.1f}" for _, n, loss, acc in rows if n == name]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
