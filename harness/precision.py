"""The numeric precision of every forward pass, training and evaluation alike."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_for"]


def autocast_for(device: torch.device):
    """bf16 autocast on GPU (the paper trains in mixed precision); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
