"""A seeded random horizontal flip as an FFCV operation, compiled once per machine.

FFCV's RandomHorizontalFlip generates its code per pipeline and numba compiles it, parallel
loop and all, every time a loader is built: about 6.5 s of CPU per loader on a 2-core Intel
Xeon @ 2.80 GHz (benchmarks/loader_startup.py, BENCHMARKS.md), paid in every training worker,
probe and evaluation. `HorizontalFlip` keeps the same operation (each image of a batch flipped
left-right with probability p, independently) but draws which images to flip in the
pipeline's thread from a seeded numpy generator, so flips repeat from run to run (FFCV's come
from numba's unseeded generator), and copies the batch with `flip_batch`, a kernel numba keeps
on disk (`cache=True`, in __pycache__): only the first process on a machine compiles it.
"""

from dataclasses import replace

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from numba import njit, prange

__all__ = ["HorizontalFlip", "flip_batch"]


@njit(parallel=True, cache=True, nogil=True)
def flip_batch(images, flip, destination):
    """destination[i] = images[i] mirrored left-right where flip[i], else a copy; N x H x W x C."""
    for i in prange(images.shape[0]):
        if flip[i]:
            destination[i] = images[i, :, ::-1]
        else:
            destination[i] = images[i]
    return destination


class HorizontalFlip(Operation):
    """FFCV operation: flip each image left-right with probability `p` (seeded), after the decoder."""

    def __init__(self, p: float = 0.5, seed: int | np.random.SeedSequence = 0):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability {p} must lie in [0, 1]")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def generate_code(self):
        p, rng = self.p, self.rng

        def flip(images, destination):
            n = images.shape[0]
            return flip_batch(images, rng.random(n) < p, destination[:n])

        return flip

    def declare_state_and_memory(self, previous_state):
        if len(previous_state.shape) != 3:
            raise ValueError("HorizontalFlip takes H x W x C images: put it right after the "
                             f"decoder (got shape {previous_state.shape})")
        # Not jitted itself (the draws use numpy's seeded generator); it calls the cached kernel.
        return (replace(previous_state, jit_mode=False),
                AllocationQuery(previous_state.shape, previous_state.dtype))
