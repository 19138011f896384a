"""The online linear probe: the live quality signal of a pretraining run (and of a sweep).

A linear classifier trained beside the twins on the *detached* backbone features of view A with
the labels (solo-learn's online classifier, FFCV-SSL's online linear eval): its gradient never
reaches the backbone, and it has its own optimizer. Each epoch it is evaluated on the
validation list carved from train (never on test: ASHA stops trials on it), centre-cropped,
with the backbone in eval mode. It tracks the final linear evaluation (frozen backbone, 100
epochs) only roughly: it chases a moving backbone and sees augmented images.

The head feeds its linear layer unit features: a BatchNorm without affine parameters (as the
linear probes of MAE and others) and then a factor 1/sqrt(D), so that each feature vector has
zero mean and an expected squared norm of 1 whatever the backbone's width D and feature scale.
An SGD step then moves the logits by about lr times the gradient on them, for ResNet-18 and
ResNet-50 alike, and `probe.lr` means the same in every recipe. On raw features the probe
diverged in the CPU demo recipe (training loss 2.98, 4.55, 6.27, 5.11 over four epochs, above
the ln 10 of a uniform guess; top-1 0.07, below chance), and BatchNorm alone at lr 0.1 is worse
(each step moves the logits D times more): benchmarks/online_probe.py measures these heads side
by side on one run (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ProbeConfig

__all__ = ["OnlineProbe", "UnitFeatures"]


class UnitFeatures(nn.Module):
    """Zero-mean features of expected squared norm 1: BatchNorm (no affine) / sqrt(D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.scale = dim ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x) * self.scale


class OnlineProbe:
    """head: `OnlineProbe.head(...)`, already on its device and DDP-wrapped if needed."""

    @staticmethod
    def head(feature_dim: int, num_classes: int) -> nn.Module:
        # Batch statistics in training, running statistics at evaluation (eval mode).
        return nn.Sequential(UnitFeatures(feature_dim), nn.Linear(feature_dim, num_classes))

    def __init__(self, head: nn.Module, cfg: ProbeConfig):
        self.head = head
        self.optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)

    @property
    def _module(self) -> nn.Module:
        return getattr(self.head, "module", self.head)

    def train_step(self, features: Tensor, labels: Tensor) -> Tensor:
        """One SGD step on detached features; returns the (detached) cross-entropy."""
        # float32 whatever the autocast: the probe is tiny, and bf16 logits cost accuracy.
        with torch.autocast(device_type=features.device.type, enabled=False):
            loss = F.cross_entropy(self.head(features.detach().float()), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, backbone: nn.Module, loader, autocast) -> float:
        """Top-1 over the whole eval split: each rank its own shard, counts summed over ranks.

        The caller puts the backbone in eval mode (BN running statistics) and back.
        """
        device = next(self._module.parameters()).device
        self.head.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, seen
        for images, labels in loader:
            with autocast:
                features = backbone(images)
            logits = self._module(features.float())
            counts[0] += (logits.argmax(dim=1) == labels).sum()
            counts[1] += labels.numel()
        self.head.train()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        return float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")

    def state_dict(self) -> dict:
        return {"head": self._module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "0.norm.running_mean" not in state["head"]:
            # A checkpoint from before UnitFeatures: its head read raw features; the probe
            # starts again (it never touches the backbone).
            return
        self._module.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
