"""Backbone features of a whole split (centre crop, eval mode), computed once per evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from harness.data import eval_loader
from harness.precision import autocast_for

__all__ = ["extract_features", "extract_parts", "topk_correct"]


@torch.no_grad()
def extract_features(module: nn.Module, path, *, indices, resolution: int, batch_size: int,
                     device: torch.device, num_workers: int) -> tuple[Tensor, Tensor]:
    """(features float32 N x D on the CPU, labels int64 N) for the images of `indices`."""
    loader = eval_loader(path, batch_size=batch_size, resolution=resolution, device=device,
                         num_workers=num_workers, indices=indices, distributed=False, passes=1)
    module.eval()
    features, labels = [], []
    for images, y in loader:
        with autocast_for(device):
            f = module(images)
        features.append(f.float().cpu())
        labels.append(y.cpu())
    return torch.cat(features), torch.cat(labels).long()


def extract_parts(module: nn.Module, parts: Iterable, *, resolution: int, batch_size: int,
                  device: torch.device, num_workers: int) -> dict[str, tuple[Tensor, Tensor]]:
    """{role: (features, labels)} of evaluation parts (harness.evaluation.data.EvalPart), in
    each part's own image order, with one loader per .beton file: parts of one file (train and
    the validation list carved from it) share one pass, and so one compile of FFCV's pipeline
    (about 1.2 s of CPU a loader on the machine of BENCHMARKS.md's row) instead of one
    each."""
    by_path: dict = {}
    for part in parts:
        by_path.setdefault(part.path, []).append(part)
    out = {}
    for path, group in by_path.items():
        # A part without indices is the whole file (its labels are the file's labels).
        wanted = [np.arange(len(p.labels)) if p.indices is None else np.asarray(p.indices)
                  for p in group]
        union = np.unique(np.concatenate(wanted))  # sorted: the loader's sequential order
        features, labels = extract_features(module, path, indices=union, resolution=resolution,
                                            batch_size=batch_size, device=device,
                                            num_workers=num_workers)
        for part, indices in zip(group, wanted):
            rows = torch.from_numpy(np.searchsorted(union, indices))
            out[part.role] = (features[rows], labels[rows])
    return out


def topk_correct(scores: Tensor, labels: Tensor, ks=(1, 5)) -> dict[int, int]:
    """{k: how many rows have their label among the k highest scores} (k capped at classes)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}
