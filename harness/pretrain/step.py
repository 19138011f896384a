"""One training step of the twin network, and the model and optimizer it steps, without Ray.

The Ray Train worker loop (harness.pretrain.worker) drives these; so can anything else that
needs the exact step, e.g. a GPU check on a machine without Ray or FFCV (benchmarks/gpu_step.py).

Precision and layout: bf16 autocast and channels_last on GPU; plain float32 on CPU. The loss
computes the cross-correlation in float32 whatever the autocast, and bf16 needs no loss scaling.
BatchNorm across workers: SyncBatchNorm on GPU when there is more than one worker, as in the
authors' code; torch's SyncBatchNorm runs on GPUs only, so a multi-worker CPU run keeps
per-worker BN statistics in the backbone and projector (the loss still normalises z over the
global batch).
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import torch
from torch import Tensor, nn

from harness.config.schema import PretrainConfig
from harness.loss import BarlowTwinsLoss
from harness.model import BarlowTwins, convert_sync_batchnorm
from harness.optim import LARS, apply_lr_schedule, param_groups, scaled_lr
from harness.precision import autocast_for

__all__ = ["autocast_for", "build_model", "build_loss", "build_optimizer", "StepResult", "TwinStep",
           "TimedBatches"]


def build_model(cfg: PretrainConfig, *, world_size: int, device: torch.device,
                state: dict | None = None) -> nn.Module:
    """The unwrapped twin network on `device`, weights from a checkpoint's state if given."""
    model = BarlowTwins.from_model_config(dataclasses.asdict(cfg.model))
    if state:
        model.load_state_dict(state["model"])
    if world_size > 1 and device.type == "cuda":
        model = convert_sync_batchnorm(model)
    model = model.to(device)
    if device.type == "cuda":
        # Convolutions in NHWC run on tensor cores without layout transposes.
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loss(cfg: PretrainConfig) -> BarlowTwinsLoss:
    """The loss a config describes: lambda, scale, which terms, which normalisation, which kind."""
    c = cfg.loss
    return BarlowTwinsLoss(lambd=c.lambd, scale=c.scale, terms=c.terms, normalize=c.normalize,
                           kind=c.kind, temperature=c.temperature)


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> LARS:
    o = cfg.optimizer
    # The paper's rates are per 256 images: scale by the GLOBAL batch (optimizer.lr_scaling).
    groups = param_groups(model, lr_weights=scaled_lr(o.lr_weights, cfg.batch_size,
                                                      rule=o.lr_scaling),
                          lr_biases=scaled_lr(o.lr_biases, cfg.batch_size, rule=o.lr_scaling),
                          weight_decay=o.weight_decay)
    # "solo-learn" is solo-learn's LARS as its CIFAR barlow.yaml sets it: clip_lr True.
    return LARS(groups, lr=0.0, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta,
                variant=o.lars_variant, clip_lr=o.lars_variant == "solo-learn")


class StepResult(NamedTuple):
    """Detached 0-d tensors (still on the device: reading them syncs) and the lrs used."""

    total: Tensor
    on_diag: Tensor
    off_diag: Tensor
    probe_loss: Tensor
    lrs: list[float]


class TwinStep:
    """loss + LARS step (+ online probe step) for one batch at optimizer step `step`.

    model: the twin network, DDP-wrapped under data parallelism; probe: an OnlineProbe or None.
    """

    def __init__(self, model: nn.Module, optimizer: LARS, cfg: PretrainConfig, *,
                 steps_per_epoch: int, device: torch.device, probe=None):
        self.model, self.optimizer, self.probe, self.device = model, optimizer, probe, device
        self.loss_fn = build_loss(cfg)
        self.total_steps = cfg.epochs * steps_per_epoch
        self.warmup_steps = cfg.warmup_epochs * steps_per_epoch
        self.end_factor = cfg.optimizer.end_lr_factor

    def __call__(self, view_a: Tensor, view_b: Tensor, label: Tensor, step: int) -> StepResult:
        lrs = apply_lr_schedule(self.optimizer, step, total_steps=self.total_steps,
                                warmup_steps=self.warmup_steps, end_factor=self.end_factor)
        with autocast_for(self.device):
            # One call per view: each view's batch gets its own BN statistics (the authors').
            out_a, out_b = self.model(view_a), self.model(view_b)
        parts = self.loss_fn(out_a.z, out_b.z)
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        self.optimizer.step()
        probe_loss = (self.probe.train_step(out_a.features, label) if self.probe is not None
                      else parts.total.new_zeros(()).detach())
        return StepResult(parts.total.detach(), parts.on_diag.detach(), parts.off_diag.detach(),
                          probe_loss, lrs)


class TimedBatches:
    """One pass over a loader that times the waits for its batches: `waited` is the seconds
    spent in the loader so far (the end-of-pass check included), the data-wait of a step loop.
    `close()` ends the pass early (a two-view loader's pass stops its FFCV epoch thread)."""

    def __init__(self, loader):
        self._batches = iter(loader)
        self.waited = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self._batches, None)
        self.waited += time.perf_counter() - start
        if batch is None:
            raise StopIteration
        return batch

    def close(self) -> None:
        self._batches.close()
