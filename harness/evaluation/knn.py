"""Weighted cosine k-nearest-neighbour classification (InstDisc / DINO / solo-learn's kNN).

Features are L2-normalised; each test image's k most similar training images vote for their
class with weight exp(similarity / T). Top-1 and top-5 over the vote totals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.evaluation.features import topk_correct

__all__ = ["knn_votes", "knn_metrics"]


@torch.no_grad()
def knn_votes(train_f: Tensor, train_y: Tensor, test_f: Tensor, *, k: int, temperature: float,
              num_classes: int, chunk: int = 1024) -> Tensor:
    """Vote totals, test images x classes."""
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    k = min(k, len(train_f))
    out = []
    for start in range(0, len(test_f), chunk):
        sim = test_f[start:start + chunk] @ train_f.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_y[top_idx], (top_sim.double() / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_metrics(train: tuple[Tensor, Tensor], evaluated: dict[str, tuple[Tensor, Tensor]], *,
                ks, temperature: float, num_classes: int) -> dict[str, float]:
    """{"val/k20_top1", ..., "test/k200_top5"}: the bank is `train` (train minus val) only."""
    metrics = {}
    for split, (f, y) in evaluated.items():
        for k in ks:
            votes = knn_votes(*train, f, k=k, temperature=temperature, num_classes=num_classes)
            hits = topk_correct(votes, y)
            metrics[f"{split}/k{k}_top1"] = hits[1] / len(y)
            metrics[f"{split}/k{k}_top5"] = hits[5] / len(y)
    return metrics
