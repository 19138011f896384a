"""The Barlow Twins loss (Zbontar et al. 2021, eq. 1) and nothing else.

Where the normalisation lives: here, not in the model. The model returns the raw output of the
projector's last Linear; `cross_correlation` standardises every feature along the *global* batch
(mean 0, biased variance 1, eps 1e-5: exactly what the authors' `BatchNorm1d(D, affine=False)`
does in training mode, and what it does across workers once converted to SyncBatchNorm). Keeping
it in the loss means the loss is correct on its own under data parallelism, whatever the model
wraps, and the model carries no layer whose only job is the loss.

The DDP gradient math (why the collectives are the autograd-aware ones):
every statistic that crosses workers (feature sums, squared deviations, C) is summed with
`torch.distributed.nn.functional.all_reduce`, whose backward is itself an all_reduce SUM. So every
rank computes the same global loss L, and in backward each rank receives dL/dC from all W ranks,
i.e. W * dL/dC, and likewise W times the total derivative for the mean and variance. Rank r's
parameter gradient is therefore W * g_r, where g_r is the part of the single-process gradient
that flows through rank r's samples (sum_r g_r = g). DDP then *averages* over ranks:
(1/W) * sum_r W * g_r = g, the single-process gradient on the global batch. With the plain
`dist.all_reduce` the other ranks' terms are constants to autograd, rank r gets only its own
path, and DDP's average is g / W for C (the bug in the authors' main.py; lightly #1977/#1980).
tests/test_loss.py checks this against a real 2-process DistributedDataParallel run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

__all__ = ["BN_EPS", "KINDS", "NORMALIZE", "TERMS", "LossParts", "cross_correlation",
           "BarlowTwinsLoss"]

# The paper's loss ablations (Section 4, "loss function ablations"): which terms the loss keeps,
# along which axis z is standardised before the cross-correlation, and which function of C is
# minimised: eq. 1 (the method) or the cross-entropy with temperature the paper compares.
TERMS = ("both", "invariance", "redundancy")
NORMALIZE = ("batch", "feature", "none")
KINDS = ("barlow_twins", "cross_entropy")

# torch.nn.BatchNorm1d's default: the authors normalise with BatchNorm1d(D, affine=False).
BN_EPS = 1e-5


class LossParts(NamedTuple):
    """The loss and its two terms, each a 0-d tensor (still attached to the graph).

    `off_diag` is reported *unweighted* (sum_{i!=j} C_ij^2, before lambda and scale) so that runs
    with different lambda can be compared on it; `total = scale * (on_diag + lambd * off_diag)`
    for eq. 1 with both terms (other kinds and terms: BarlowTwinsLoss).
    Under data parallelism every rank holds the same global values: log from any one rank.
    """

    total: Tensor
    on_diag: Tensor
    off_diag: Tensor


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _sum_over_workers(t: Tensor) -> Tensor:
    # The autograd-aware all_reduce: see the module docstring for why the plain one is wrong.
    if _world_size() > 1:
        return dist_fn.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = BN_EPS,
                      normalize: str = "batch") -> Tensor:
    """D x D cross-correlation of two views' projector outputs over the global batch.

    z_a, z_b: (n_local, D) raw projector outputs of the same images under two augmentations.
    normalize="batch" (the method): each column is standardised with the global batch mean and
    biased variance (BatchNorm semantics). "feature": each row (one image's embedding) is
    standardised along its D features instead, mean 0 and biased variance 1, the same
    operation on the other axis (needs no statistics from other workers). "none": z as it is.
    Then C = z_a_norm^T z_b_norm / N_global. Computed in float32 (or float64 if given) with
    autocast off: a D x D sum of N products loses too much in half precision.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r}: choose one of {', '.join(NORMALIZE)}")
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must both be (batch, dim) of one shape, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if z_a.shape[0] < 2 and _world_size() == 1 and normalize == "batch":
        raise ValueError(f"batch-normalising needs at least 2 samples, got {z_a.shape[0]}")
    dtype = torch.promote_types(z_a.dtype, torch.float32)
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        # Both views stacked so that each statistic costs one collective, not two.
        z = torch.stack((z_a, z_b)).to(dtype)  # (2, n_local, D)
        if normalize != "batch":
            n = _sum_over_workers(z.new_tensor(float(z.shape[1])))
            if normalize == "feature":
                centred = z - z.mean(dim=2, keepdim=True)
                z = centred * torch.rsqrt(centred.square().mean(dim=2, keepdim=True) + eps)
            return _sum_over_workers(z[0].T @ z[1] / n)
        dim = z.shape[2]
        # The local count travels with the sums: shards may differ in size (last batch).
        sums = _sum_over_workers(torch.cat((z.sum(dim=1).flatten(), z.new_tensor([z.shape[1]]))))
        n = sums[-1]
        mean = sums[:-1].view(2, 1, dim) / n
        centred = z - mean
        # Two passes (mean, then squared deviations) rather than E[z^2] - mean^2: no cancellation
        # when a feature's mean is large compared with its spread.
        var = _sum_over_workers(centred.square().sum(dim=1, keepdim=True)) / n
        z_norm = centred * torch.rsqrt(var + eps)
        return _sum_over_workers(z_norm[0].T @ z_norm[1] / n)


def _off_diagonal(c: Tensor) -> Tensor:
    # The authors' view trick: the off-diagonal entries of a square matrix without a mask or copy.
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _cross_entropy(c: Tensor, lambd: float, temperature: float) -> Tensor:
    # -log sum_i exp(C_ii / t) + lambd * log sum_{i!=j} exp(max(C_ij, 0) / t), as log-sum-exps
    # (no overflow at small t: C_ij / t reaches 1 / t).
    return (-torch.logsumexp(torch.diagonal(c) / temperature, dim=0)
            + lambd * torch.logsumexp(_off_diagonal(c).clamp(min=0) / temperature, dim=0))


class BarlowTwinsLoss(nn.Module):
    """scale * (sum_i (1 - C_ii)^2 + lambd * sum_{i!=j} C_ij^2), C from `cross_correlation`.

    terms="invariance" keeps only the first term (scale * sum_i (1 - C_ii)^2), "redundancy"
    only the second (scale * lambd * sum_{i!=j} C_ij^2): the paper's loss-term ablations.
    normalize: how z is standardised before C (cross_correlation); "batch" is the method.
    Both parts are computed and reported whichever terms the loss keeps.

    kind="cross_entropy" minimises, instead of eq. 1, the cross-entropy with temperature t that
    the paper's loss ablations compare with it (Section 4, the row "cross-entropy with temp.",
    63.3 against 71.4 top-1), on the same C:
        scale * (-log sum_i exp(C_ii / t) + lambd * log sum_i sum_{j!=i} exp(max(C_ij, 0) / t))
    with its own lambd (the paper tunes t and lambd for it and states neither). It keeps both
    terms; `on_diag` and `off_diag` still report eq. 1's two parts of C, so that runs of either
    kind compare on them.

    lambd: 0.0051 in the authors' code (the paper says 5e-3). scale: 1 for the paper's recipe,
    0.1 in solo-learn's CIFAR recipe; it only rescales the gradient (LARS is mostly invariant to
    it, plain SGD is not). The loss is a sum over a D x D matrix, so it grows with D: about 1e4 at
    D = 8192 early in training is normal.
    """

    def __init__(self, lambd: float = 0.0051, scale: float = 1.0, eps: float = BN_EPS,
                 terms: str = "both", normalize: str = "batch", kind: str = "barlow_twins",
                 temperature: float | None = None):
        super().__init__()
        for name, value, choices in (("terms", terms, TERMS), ("normalize", normalize, NORMALIZE),
                                     ("kind", kind, KINDS)):
            if value not in choices:
                raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)}")
        if not lambd > 0:
            raise ValueError(f"lambd must be > 0 (the paper uses 0.0051), got {lambd}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (1.0 for the paper, 0.1 for CIFAR), got {scale}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (BatchNorm's default is 1e-5), got {eps}")
        if kind == "cross_entropy":
            if temperature is None or not temperature > 0:
                raise ValueError(f"kind='cross_entropy' needs a temperature > 0, got {temperature}")
            if terms != "both":
                raise ValueError(f"terms={terms!r} applies to kind='barlow_twins' only: the "
                                 f"cross-entropy variant keeps both of its terms")
        elif temperature is not None:
            raise ValueError(f"temperature={temperature} applies to kind='cross_entropy' only")
        self.lambd = float(lambd)
        self.scale = float(scale)
        self.eps = float(eps)
        self.terms, self.normalize, self.kind = terms, normalize, kind
        self.temperature = None if temperature is None else float(temperature)

    def forward(self, z_a: Tensor, z_b: Tensor) -> LossParts:
        c = cross_correlation(z_a, z_b, self.eps, self.normalize)
        on_diag = (1 - torch.diagonal(c)).square().sum()
        off_diag = _off_diagonal(c).square().sum()
        if self.kind == "cross_entropy":
            total = self.scale * _cross_entropy(c, self.lambd, self.temperature)
        elif self.terms == "both":
            total = self.scale * (on_diag + self.lambd * off_diag)
        elif self.terms == "invariance":
            total = self.scale * on_diag
        else:
            total = self.scale * self.lambd * off_diag
        return LossParts(total=total, on_diag=on_diag, off_diag=off_diag)

    def extra_repr(self) -> str:
        kind = (f", kind={self.kind}, temperature={self.temperature}"
                if self.kind != "barlow_twins" else "")
        return (f"lambd={self.lambd}, scale={self.scale}, eps={self.eps}, terms={self.terms}, "
                f"normalize={self.normalize}{kind}")
