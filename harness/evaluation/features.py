"""Backbone features of a whole split (centre crop, eval mode), computed once per evaluation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.data import eval_loader
from harness.precision import autocast_for

__all__ = ["extract_features", "topk_correct"]


@torch.no_grad()
def extract_features(module: nn.Module, path, *, indices, resolution: int, batch_size: int,
                     device: torch.device, num_workers: int) -> tuple[Tensor, Tensor]:
    """(features float32 N x D on the CPU, labels int64 N) for the images of `indices`."""
    loader = eval_loader(path, batch_size=batch_size, resolution=resolution, device=device,
                         num_workers=num_workers, indices=indices, distributed=False)
    module.eval()
    features, labels = [], []
    for images, y in loader:
        with autocast_for(device):
            f = module(images)
        features.append(f.float().cpu())
        labels.append(y.cpu())
    return torch.cat(features), torch.cat(labels).long()


def topk_correct(scores: Tensor, labels: Tensor, ks=(1, 5)) -> dict[int, int]:
    """{k: how many rows have their label among the k highest scores} (k capped at classes)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}
