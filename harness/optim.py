"""LARS (two published variants) and the learning-rate schedule of the authors' main.py.

The recipe (paper and code): LARS with momentum 0.9 and eta 0.001 (solo-learn's CIFAR recipe:
eta 0.02); weights lr 0.2 and biases/BN lr 0.0048, each x batch/256; linear warm-up from 0 over
10 epochs, then per-step cosine decay to 0.001 x the peak. Parameters with ndim <= 1 (biases and
BN affine parameters) get neither weight decay nor the LARS trust ratio: build the groups with
`param_groups`, which flags that group `lars_exclude=True`.

`LARS(variant="barlowtwins")` (the default) is facebookresearch/barlowtwins' update;
`LARS(variant="solo-learn", clip_lr=True)` is vturrisi/solo-learn's solo/utils/lars.py as its
CIFAR barlow.yaml runs it (clip_lr: True, exclude_bias_n_norm: True). The formulas are in LARS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LARS", "LARS_VARIANTS", "LR_SCALING", "param_groups", "scaled_lr", "lr_at",
           "apply_lr_schedule"]

LARS_VARIANTS = ("barlowtwins", "solo-learn")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as barlowtwins or solo-learn has it.

    Per parameter p with gradient g (skipped when g is None), wd the group's weight_decay and lr
    its current (scheduled) lr. variant="barlowtwins" (facebookresearch/barlowtwins):
      u = g + wd * p
      u = u * eta * ||p|| / ||u||                 (trust ratio; 1 when either norm is 0)
    variant="solo-learn" (solo-learn's LARS, from PyTorch Lightning Bolts): the ratio uses the
    norm of the raw gradient, with wd and eps in the denominator:
      r = ||p|| / (||g|| + ||p|| * wd + eps) * eta
      r = min(r / lr, 1)                          (only with clip_lr; 1 when lr is 0)
      u = (g + wd * p) * r                        (u = g, no decay, when ||p|| or ||g|| is 0)
    With the clip the step lr * r is min(eta-ratio, lr): the ratio caps the lr, never raises it.
    Both then:
      mu = momentum * mu + u
      p  = p - lr * mu
    A group with `lars_exclude=True` skips both the weight decay and the trust ratio (plain SGD
    with momentum), which is how both treat biases and BN parameters (solo-learn's
    exclude_bias_n_norm=True excludes ndim == 1 parameters the same way).
    """

    def __init__(self, params: Iterable, lr: float, *, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, lars_exclude: bool = False,
                 variant: str = "barlowtwins", clip_lr: bool = False, eps: float = 1e-8):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0 (the paper uses 1e-6), got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (the paper uses 0.9), got {momentum}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0 (0.001 ImageNet, 0.02 CIFAR), got {eta}")
        if variant not in LARS_VARIANTS:
            raise ValueError(f"LARS variant {variant!r}: choose one of {', '.join(LARS_VARIANTS)}")
        if clip_lr and variant != "solo-learn":
            raise ValueError("clip_lr is solo-learn's option: use variant='solo-learn'")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (solo-learn uses 1e-8), got {eps}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=lars_exclude, variant=variant, clip_lr=clip_lr, eps=eps)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # a state_dict saved before the variants existed
            group.setdefault("variant", "barlowtwins")
            group.setdefault("clip_lr", False)
            group.setdefault("eps", 1e-8)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    if group["variant"] == "solo-learn":
                        update = _solo_learn_update(p, update, group)
                    else:
                        update = update.add(p, alpha=group["weight_decay"])
                        param_norm = torch.linalg.vector_norm(p)
                        update_norm = torch.linalg.vector_norm(update)
                        # torch.where keeps the ratio on the device: no host sync per parameter.
                        trust = torch.where((param_norm > 0) & (update_norm > 0),
                                            group["eta"] * param_norm / update_norm,
                                            torch.ones_like(param_norm))
                        update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _solo_learn_update(p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
    """solo-learn's scaled update (g + wd * p) * r, in its order of operations, on the device."""
    wd, lr = group["weight_decay"], group["lr"]
    param_norm = torch.linalg.vector_norm(p)
    grad_norm = torch.linalg.vector_norm(grad)
    trust = param_norm / (grad_norm + param_norm * wd + group["eps"]) * group["eta"]
    if group["clip_lr"]:
        # solo-learn's min(r / lr, 1): at lr 0 its r / 0 is inf and min() gives 1 (the limit as
        # lr -> 0); here the 1 is taken directly, so no inf is made.
        trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
    return torch.where((param_norm > 0) & (grad_norm > 0), grad.add(p, alpha=wd).mul(trust), grad)


def param_groups(module: nn.Module, *, lr_weights: float, lr_biases: float,
                 weight_decay: float) -> list[dict]:
    """Two LARS groups: weights (ndim >= 2) and biases/BN (ndim <= 1, `lars_exclude=True`).

    Each group stores its peak lr as `base_lr`, which `apply_lr_schedule` scales every step; pass
    already batch-scaled rates (`scaled_lr(0.2, batch)`, `scaled_lr(0.0048, batch)`). Frozen
    parameters are left out; an empty group is dropped.
    """
    weights, biases = [], []
    for p in module.parameters():
        if p.requires_grad:
            (biases if p.ndim <= 1 else weights).append(p)
    groups = [
        dict(name="weights", params=weights, lr=lr_weights, base_lr=lr_weights,
             weight_decay=weight_decay, lars_exclude=False),
        # weight_decay 0 here too, so the group reads the same to any optimizer, not only LARS.
        dict(name="biases_and_norm", params=biases, lr=lr_biases, base_lr=lr_biases,
             weight_decay=0.0, lars_exclude=True),
    ]
    return [g for g in groups if g["params"]]


LR_SCALING = ("linear", "sqrt", "none")


def scaled_lr(base: float, batch_size: int, reference: int = 256, rule: str = "linear") -> float:
    """The peak learning rate for `batch_size` from one given per `reference` images.

    linear (the paper's rule): base * batch / reference; sqrt: base * sqrt(batch / reference);
    none: base whatever the batch.
    """
    if not base >= 0:
        raise ValueError(f"base lr must be >= 0, got {base}")
    if batch_size < 1 or reference < 1:
        raise ValueError(f"batch_size and reference must be >= 1, got {batch_size}, {reference}")
    if rule not in LR_SCALING:
        raise ValueError(f"lr scaling rule {rule!r}: choose one of {', '.join(LR_SCALING)}")
    ratio = batch_size / reference
    return base * {"linear": ratio, "sqrt": ratio ** 0.5, "none": 1.0}[rule]


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float,
          end_factor: float = 0.001) -> float:
    """The authors' adjust_learning_rate: lr at optimiser step `step` (0-based).

    Linear warm-up from 0 at step 0 to base_lr at warmup_steps, then cosine decay to
    end_factor * base_lr at total_steps (and held there past it).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not base_lr >= 0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr}")
    if not 0 <= end_factor <= 1:
        raise ValueError(f"end_factor must be in [0, 1] (the paper uses 0.001), got {end_factor}")
    end_lr = end_factor * base_lr
    if step >= total_steps:
        return end_lr
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
    return base_lr * q + end_lr * (1 - q)


def apply_lr_schedule(optimizer: torch.optim.Optimizer, step: int, *, total_steps: int,
                      warmup_steps: int, end_factor: float = 0.001) -> list[float]:
    """Set every group's lr to `lr_at(step)` of its own `base_lr`; returns the lrs set."""
    lrs = []
    for group in optimizer.param_groups:
        if "base_lr" not in group:
            raise KeyError("every param group needs a 'base_lr' (build them with param_groups())")
        group["lr"] = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps,
                            base_lr=group["base_lr"], end_factor=end_factor)
        lrs.append(group["lr"])
    return lrs
