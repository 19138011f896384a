"""The linear protocol: a linear classifier on a frozen backbone, in two modes.

fast: features are extracted once (centre crop), standardised with the training features'
mean and std, and a multinomial logistic regression with an L2 penalty on the weights (not the
bias) is fitted to convergence by L-BFGS. It is a convex problem with one optimum, which
scikit-learn's LogisticRegression(C = 1 / (n * l2)) reaches too (tests/evaluation/test_eval.py). Without
an `l2`, the penalty is chosen from 1e-6 .. 1e-1 by top-1 on the validation list (never test).

paper: the authors' evaluate.py: the backbone frozen in eval mode, a Linear head
(weights N(0, 0.01), bias 0) trained for `linear_epochs` with SGD (momentum, weight decay,
per-step cosine) on random-resized crops + flips, evaluated on centre crops.

Both fit on the train part only (train minus the validation list) and report top-1 / top-5 on
val and on test ("val/top1", "test/top1", ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data import labelled_loader
from harness.evaluation.features import topk_correct
from harness.evaluation.settings import EvalSettings
from harness.optim import lr_at
from harness.precision import autocast_for

__all__ = ["fit_logistic", "linear_fast", "linear_paper", "split_metrics", "even_batch",
           "L2_GRID"]

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


def split_metrics(scores: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """{"val/top1", "val/top5", "test/top1", ...} from {split: (scores N x C, labels N)}."""
    metrics = {}
    for split, (logits, labels) in scores.items():
        hits = topk_correct(logits, labels)
        metrics[f"{split}/top1"] = hits[1] / len(labels)
        metrics[f"{split}/top5"] = hits[5] / len(labels)
    return metrics


def even_batch(images: int, batch_size: int) -> int:
    """The batch that covers `images` in as few batches as `batch_size` allows, all of about one
    size: every image is seen each epoch, and no last batch of one breaks BatchNorm (500 images
    at 256: two batches of 250, not 256 + 244)."""
    return math.ceil(images / math.ceil(images / batch_size))


def _top1(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    return float(((x @ weight + bias).argmax(1) == y).float().mean())


def linear_fast(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                test: tuple[Tensor, Tensor], *, num_classes: int,
                l2: float | None) -> tuple[dict, dict]:
    """(metrics, settings actually used) of the cached-feature probe: fitted on `train`, its
    L2 penalty (unless given) chosen by top-1 on `val`, reported on val and test."""
    (train_f, train_y), (val_f, val_y), (test_f, test_y) = train, val, test
    train_x, val_x, test_x = _standardise(train_f.float(), val_f.float(), test_f.float())
    val_top1 = None
    if l2 is None:
        # Shorter fits to rank the penalties (the first on a tie), then the chosen one converged.
        val_top1 = {p: _top1(val_x, val_y, *fit_logistic(train_x, train_y, num_classes, p,
                                                          max_iter=200)) for p in L2_GRID}
        l2 = max(L2_GRID, key=lambda p: (val_top1[p], -L2_GRID.index(p)))
    weight, bias = fit_logistic(train_x, train_y, num_classes, l2)
    metrics = split_metrics({"val": (val_x @ weight + bias, val_y),
                             "test": (test_x @ weight + bias, test_y)})
    return metrics, {"l2": l2, "l2_chosen_on": "val" if val_top1 else "given",
                     "l2_val_top1": val_top1 and {str(p): a for p, a in val_top1.items()},
                     "train_top1": _top1(train_x, train_y, weight, bias)}


def linear_paper(backbone: nn.Module, feature_dim: int, data, evaluated: dict, *,
                 settings: EvalSettings, device: torch.device) -> tuple[dict, dict]:
    """Train a linear head on augmented crops of the train part through the frozen backbone;
    `evaluated` = {"val": (features, labels), "test": (...)}: centre-crop features to score."""
    s = settings
    torch.manual_seed(s.seed)
    head = nn.Linear(feature_dim, data.num_classes).to(device)
    head.weight.data.normal_(mean=0.0, std=0.01)
    head.bias.data.zero_()
    train = data.part("train")
    batch = even_batch(len(train), s.batch_size)
    loader = labelled_loader(train.path, batch_size=batch, resolution=data.resolution,
                             device=device, num_workers=s.loader_workers, seed=s.seed,
                             indices=train.indices, distributed=False, passes=s.linear_epochs)
    optimizer = torch.optim.SGD(head.parameters(), lr=s.linear_lr, momentum=s.linear_momentum,
                                weight_decay=s.linear_weight_decay)
    total = s.linear_epochs * len(loader)
    backbone.eval()
    step = 0
    for _ in range(s.linear_epochs):
        for images, labels in loader:
            for group in optimizer.param_groups:  # per-step cosine to 0, no warm-up
                group["lr"] = lr_at(step, total_steps=total, warmup_steps=0,
                                    base_lr=s.linear_lr, end_factor=0.0)
            with torch.no_grad(), autocast_for(device):
                features = backbone(images)
            loss = F.cross_entropy(head(features.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        metrics = split_metrics({split: (head(f.to(device)).cpu(), y)
                                 for split, (f, y) in evaluated.items()})
    return (metrics,
            {"final_train_loss": loss.item(), "epochs": s.linear_epochs, "lr": s.linear_lr,
             "momentum": s.linear_momentum,
             "weight_decay": s.linear_weight_decay, "batch_size": batch, "steps": step,
             "augmentation": "random-resized crop (0.08-1) + flip"})
