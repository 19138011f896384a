"""The linear protocol: a linear classifier on a frozen backbone, in two modes.

fast: features are extracted once (centre crop), standardised with the training features'
mean and std, and a multinomial logistic regression with an L2 penalty on the weights (not the
bias) is fitted to convergence by L-BFGS. It is a convex problem with one optimum, which
scikit-learn's LogisticRegression(C = 1 / (n * l2)) reaches too (tests/test_eval.py). Without
an `l2`, the penalty is chosen from 1e-6 .. 1e-1 on a held-out fifth of the training images.

paper: the authors' evaluate.py: the backbone frozen in eval mode, a Linear head
(weights N(0, 0.01), bias 0) trained for `linear_epochs` with SGD (momentum, weight decay,
per-step cosine) on random-resized crops + flips, evaluated on centre crops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data import labelled_loader
from harness.evaluation.features import topk_correct
from harness.evaluation.settings import EvalSettings
from harness.step import autocast_for

__all__ = ["fit_logistic", "linear_fast", "linear_paper", "L2_GRID"]

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _standardise(train_f: Tensor, *others: Tensor) -> list[Tensor]:
    mean = train_f.mean(dim=0)
    std = train_f.std(dim=0).clamp_min(1e-6)
    return [(f - mean) / std for f in (train_f, *others)]


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float,
                 max_iter: int = 500) -> tuple[Tensor, Tensor]:
    """(weight D x C, bias C) minimising mean cross-entropy + l2 / 2 * ||weight||^2."""
    # float32: as exact as the comparison with scikit-learn needs, and 3-5x faster here.
    x = x.float()
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _holdout_l2(x: Tensor, y: Tensor, num_classes: int, seed: int) -> float:
    """The L2 penalty of L2_GRID with the best accuracy on a held-out fifth of (x, y)."""
    order = np.random.default_rng([seed, 11]).permutation(len(y))
    cut = len(y) // 5
    if cut < num_classes:  # too few images to hold any out: the middle of the grid
        return 1e-4
    val, train = torch.as_tensor(order[:cut]), torch.as_tensor(order[cut:])
    best, best_acc = L2_GRID[0], -1.0
    for l2 in L2_GRID:
        weight, bias = fit_logistic(x[train], y[train], num_classes, l2, max_iter=200)
        acc = float(((x[val] @ weight + bias).argmax(1) == y[val]).float().mean())
        if acc > best_acc:
            best, best_acc = l2, acc
    return best


def linear_fast(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, *,
                num_classes: int, l2: float | None, seed: int) -> tuple[dict, dict]:
    """(metrics, settings actually used) of the cached-feature probe."""
    train_x, test_x = _standardise(train_f.float(), test_f.float())
    chosen = _holdout_l2(train_x, train_y, num_classes, seed) if l2 is None else l2
    weight, bias = fit_logistic(train_x, train_y, num_classes, chosen)
    hits = topk_correct(test_x @ weight + bias, test_y)
    train_acc = float(((train_x @ weight + bias).argmax(1) == train_y).float().mean())
    return ({"top1": hits[1] / len(test_y), "top5": hits[5] / len(test_y)},
            {"l2": chosen, "l2_chosen_on_holdout": l2 is None, "train_top1": train_acc})


def linear_paper(backbone: nn.Module, feature_dim: int, data, test_f: Tensor, test_y: Tensor, *,
                 settings: EvalSettings, device: torch.device) -> tuple[dict, dict]:
    """Train a linear head on augmented crops through the frozen backbone; test on test_f."""
    s = settings
    torch.manual_seed(s.seed)
    head = nn.Linear(feature_dim, data.num_classes).to(device)
    head.weight.data.normal_(mean=0.0, std=0.01)
    head.bias.data.zero_()
    batch = min(s.batch_size, data.count("train"))
    loader = labelled_loader(data.train_path, batch_size=batch, resolution=data.resolution,
                             device=device, num_workers=s.loader_workers, seed=s.seed,
                             indices=data.train_indices, distributed=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=s.linear_lr, momentum=s.linear_momentum,
                                weight_decay=s.linear_weight_decay)
    total = s.linear_epochs * len(loader)
    backbone.eval()
    step = 0
    for _ in range(s.linear_epochs):
        for images, labels in loader:
            for group in optimizer.param_groups:  # per-step cosine to 0
                group["lr"] = s.linear_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad(), autocast_for(device):
                features = backbone(images)
            loss = F.cross_entropy(head(features.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        hits = topk_correct(head(test_f.to(device)).cpu(), test_y)
    return ({"top1": hits[1] / len(test_y), "top5": hits[5] / len(test_y)},
            {"final_train_loss": loss.item(), "epochs": s.linear_epochs, "lr": s.linear_lr,
             "momentum": s.linear_momentum,
             "weight_decay": s.linear_weight_decay, "batch_size": batch, "steps": step,
             "augmentation": "random-resized crop (0.08-1) + flip"})
