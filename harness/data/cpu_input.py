"""uint8 image batches to the network's input on the CPU: one pass, on numba's threads.

The loaders hand out uint8 N x 3 x H x W views of FFCV's buffers (on the one-decode path
strided views of its N x 2 x H x W x 3 batch). The network takes float32 N x 3 x H x W,
standardised with the data set's mean and std. As torch ops that is four passes over the
batch (a strided copy into float, the division by 255, the subtraction, the division), about
a quarter of the whole 224 px CPU loader's time (BENCHMARKS.md). `normalized_input` does it in
one: x * (1 / (255 std)) - mean / std per channel, which equals (x / 255 - mean) / std to
float32 rounding. On a GPU the torch ops stay (`_LoaderSpec.normalized`).

Most of those passes' time was not arithmetic but the kernel faulting in the pages of a new
output tensor every batch (154 MB a view at 224 px x 256: glibc maps every block above 32 MB
afresh). `InputBuffers` keeps a loader's few output arrays and hands one out again only once
nothing refers to it: every tensor made from it, and every view of those, holds a reference to
the array, so a batch the training step still uses is never overwritten.
"""

import sys

import numpy as np
import torch
from numba import njit, prange

__all__ = ["normalized_input", "InputBuffers"]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _standardise(images, scale, shift, out):
    """out[i, c] = images[i, c] * scale[c] + shift[c], one image channel per task."""
    n, channels, h, w = images.shape
    for task in prange(n * channels):
        i, c = task // channels, task % channels
        s, b = scale[c], shift[c]
        for y in range(h):
            for x in range(w):
                out[i, c, y, x] = np.float32(images[i, c, y, x]) * s + b


class InputBuffers:
    """Up to `keep` float32 arrays, each handed out again once nothing refers to it."""

    def __init__(self, keep: int = 6):
        self.keep = keep
        self._arrays: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        arrays = self._arrays
        for i in range(len(arrays)):
            array = arrays[i]
            if sys.getrefcount(array) == 3:   # free: only the list, `array` and the argument
                if array.shape == shape:
                    return array
                del arrays[i]                 # of a shape no longer asked for (a last batch)
                break
        array = np.empty(shape, np.float32)
        if len(arrays) < self.keep:
            arrays.append(array)
        return array


def normalized_input(images: torch.Tensor, mean, std,
                     buffers: InputBuffers | None = None) -> torch.Tensor:
    """A contiguous float32 N x 3 x H x W tensor from a uint8 one of any strides on the CPU:
    (images / 255 - mean) / std per channel. It never aliases `images` (FFCV reuses its
    buffers a few batches later); with `buffers`, it is one of theirs that nothing refers to."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.is_cuda:
        raise ValueError(f"normalized_input takes a uint8 N x C x H x W CPU tensor, got "
                         f"{images.dtype} {tuple(images.shape)} on {images.device}")
    std = np.asarray(std, np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std)).astype(np.float32)
    shift = (-np.asarray(mean, np.float32) / std).astype(np.float32)
    shape = tuple(images.shape)
    out = buffers.take(shape) if buffers is not None else np.empty(shape, np.float32)
    _standardise(images.numpy(), scale, shift, out)
    return torch.from_numpy(out)
