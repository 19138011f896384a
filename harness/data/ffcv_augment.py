"""The photometric augmentations as one FFCV operation: numba kernels on FFCV's threads.

`PhotometricAugment` sits in a view's FFCV pipeline right after the crop decoder and flip, on
the uint8 H x W x 3 batch, before ToTensor. It draws the batch's parameters with
`augment.draw_params` (the same seeded torch generator and the same stream as `BatchAugment`),
then `augment_batch` runs over the images in parallel on numba's threads (the count FFCV sets
for its workers). Per image, the pixels go once into a float32 scratch on the 0-255 scale, the
colour jitter's four adjustments run in the drawn order, then grayscale, a separable Gaussian
blur with reflect padding, solarization, and the result is rounded back into the uint8 batch
in place. Each step follows torchvision's functional op on float images (as `BatchAugment`);
the only difference is that single rounding to uint8 at the end (at most half a level).
"""

from dataclasses import replace

import numpy as np
import torch
from ffcv.pipeline.operation import Operation
from numba import get_num_threads, njit, prange

from .augment import _GRAY, ViewAugment, blur_kernel_size, draw_params

__all__ = ["PhotometricAugment", "augment_batch", "NO_OP"]

# Indices of the jitter adjustments in ViewParams.factors; NO_OP marks a skipped stage.
BRIGHTNESS, CONTRAST, SATURATION, HUE, NO_OP = 0, 1, 2, 3, -1
_WR, _WG, _WB = (np.float32(w) for w in _GRAY)
_MAX = np.float32(255.0)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_SIX = np.float32(6.0)

# fastmath lets LLVM turn the float sums and min/max into vector code; cache=True keeps the
# compiled kernels on disk (__pycache__), so only the first process on a machine compiles them.
_JIT = dict(fastmath=True, cache=True, nogil=True)


@njit(**_JIT)
def _clamp(v):
    return min(max(v, _ZERO), _MAX)


@njit(**_JIT)
def _gray(r, g, b):
    return _WR * r + _WG * g + _WB * b


# One function per operation over a flat float32 image (r, g, b interleaved, 0-255 scale):
# each is a plain loop that LLVM can vectorise, as augment.py's ops are whole-tensor ops.

@njit(**_JIT)
def _brightness(x, f):
    for t in range(x.size):
        x[t] = _clamp(f * x[t])


@njit(**_JIT)
def _contrast(x, f):
    total = 0.0  # float64: a float32 sum of 50k pixels would drift
    for t in range(0, x.size, 3):
        total += _gray(x[t], x[t + 1], x[t + 2])
    m = (_ONE - f) * np.float32(total / (x.size // 3))
    for t in range(x.size):
        x[t] = _clamp(f * x[t] + m)


@njit(**_JIT)
def _saturation(x, f):
    for t in range(0, x.size, 3):
        m = (_ONE - f) * _gray(x[t], x[t + 1], x[t + 2])
        x[t] = _clamp(f * x[t] + m)
        x[t + 1] = _clamp(f * x[t + 1] + m)
        x[t + 2] = _clamp(f * x[t + 2] + m)


@njit(**_JIT)
def _hue_channel(maxc, cr, h6, n):
    k = h6 + n
    k = k - _SIX if k >= _SIX else k
    return maxc - cr * min(max(min(k, np.float32(4.0) - k), _ZERO), _ONE)


@njit(**_JIT)
def _hue(x, f, planes):
    """Rotate the hue by f turns keeping value and chroma: the closed form of augment._hue.

    Row by row through `planes` (3 x W float32 scratch): the pixels are split into R, G and B
    runs, rotated there in one branch-free loop that LLVM turns into vector code (on the
    interleaved pixels it stays scalar: 4-5x slower), and interleaved back."""
    w = planes.shape[1]
    red, green, blue = planes[0], planes[1], planes[2]
    turn = _SIX * f
    for start in range(0, x.size // 3, w):
        m = min(w, x.size // 3 - start)
        for i in range(m):
            t = 3 * (start + i)
            red[i], green[i], blue[i] = x[t], x[t + 1], x[t + 2]
        for i in range(m):
            r, g, b = red[i], green[i], blue[i]
            maxc, minc = max(r, max(g, b)), min(r, min(g, b))
            cr = maxc - minc
            inv = _ONE / (cr if cr > 0 else _ONE)  # gray pixels: every term below is 0
            rc, gc, bc = (maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv
            h6 = (bc - gc if maxc == r else
                  np.float32(2.0) + rc - bc if maxc == g else np.float32(4.0) + gc - rc)
            h6 = h6 + turn
            h6 = h6 - _SIX * np.floor(h6 / _SIX)  # into [0, 6)
            red[i] = _hue_channel(maxc, cr, h6, np.float32(5.0))
            green[i] = _hue_channel(maxc, cr, h6, np.float32(3.0))
            blue[i] = _hue_channel(maxc, cr, h6, np.float32(1.0))
        for i in range(m):
            t = 3 * (start + i)
            x[t], x[t + 1], x[t + 2] = red[i], green[i], blue[i]


@njit(**_JIT)
def _grayscale(x):
    for t in range(0, x.size, 3):
        x[t] = x[t + 1] = x[t + 2] = _gray(x[t], x[t + 1], x[t + 2])


@njit(**_JIT)
def _reflect(i, n):
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(**_JIT)
def _blur(buf, tmp, line, sigma, kernel_size):
    """Separable Gaussian blur of buf (h x w*3) in place, reflect padding as torchvision."""
    h, w3 = buf.shape
    w, pad = w3 // 3, kernel_size // 2
    half = np.float32((kernel_size - 1) * 0.5)
    weights = np.empty(kernel_size, np.float32)
    for j in range(kernel_size):
        d = (np.float32(j) - half) / sigma
        weights[j] = np.exp(np.float32(-0.5) * d * d)
    weights /= weights.sum()
    # Four taps per pass over a row (then the rest one by one): a quarter of the partial sums'
    # loads and stores (measured: 15% off the blur at 23 taps, 224 px).
    last4 = kernel_size - kernel_size % 4
    # Rows: one reflect-padded copy of the row, then contiguous multiply-adds.
    for y in range(h):
        for x in range(-pad, w + pad):
            sx = _reflect(x, w)
            for c in range(3):
                line[(x + pad) * 3 + c] = buf[y, sx * 3 + c]
        out = tmp[y]
        out[:] = 0
        for j in range(0, last4, 4):
            k0, k1, k2, k3 = weights[j], weights[j + 1], weights[j + 2], weights[j + 3]
            a0, a1 = line[3 * j:3 * j + w3], line[3 * j + 3:3 * j + 3 + w3]
            a2, a3 = line[3 * j + 6:3 * j + 6 + w3], line[3 * j + 9:3 * j + 9 + w3]
            for t in range(w3):
                out[t] += k0 * a0[t] + k1 * a1[t] + k2 * a2[t] + k3 * a3[t]
        for j in range(last4, kernel_size):
            wj = weights[j]
            for t in range(w3):
                out[t] += wj * line[t + 3 * j]
    # Columns: whole rows of tmp, reflected at the top and bottom edges.
    for y in range(h):
        out = buf[y]
        out[:] = 0
        for j in range(0, last4, 4):
            k0, k1, k2, k3 = weights[j], weights[j + 1], weights[j + 2], weights[j + 3]
            a0, a1 = tmp[_reflect(y + j - pad, h)], tmp[_reflect(y + j + 1 - pad, h)]
            a2, a3 = tmp[_reflect(y + j + 2 - pad, h)], tmp[_reflect(y + j + 3 - pad, h)]
            for t in range(w3):
                out[t] += k0 * a0[t] + k1 * a1[t] + k2 * a2[t] + k3 * a3[t]
        for j in range(last4, kernel_size):
            wj = weights[j]
            src = tmp[_reflect(y + j - pad, h)]
            for t in range(w3):
                out[t] += wj * src[t]


@njit(**_JIT)
def augment_image(img, ops, factors, grayscale, sigma, solarize, kernel_size, buf, tmp, line):
    """Augment one uint8 H x W x 3 image in place with explicitly drawn parameters.

    ops: the four jitter stages in order (BRIGHTNESS..HUE, NO_OP for a skipped one);
    factors: the four factors indexed by op; sigma: the blur's sigma, 0 for no blur.
    buf and tmp (H x 3W float32) and line ((W + kernel_size) * 3, at least 3W) are scratch.
    """
    jitter = False
    for s in range(4):
        jitter |= ops[s] != NO_OP
    if not (jitter or grayscale or sigma > 0 or solarize):
        return
    pixels = img.reshape(-1)
    x = buf.reshape(-1)
    for t in range(x.size):
        x[t] = np.float32(pixels[t])
    for s in range(4):
        op, f = ops[s], factors[max(ops[s], 0)]  # NO_OP reads a factor it ignores
        if op == BRIGHTNESS:
            _brightness(x, f)
        elif op == CONTRAST:
            _contrast(x, f)
        elif op == SATURATION:
            _saturation(x, f)
        elif op == HUE:
            _hue(x, f, line[:3 * img.shape[1]].reshape(3, img.shape[1]))
    if grayscale:
        _grayscale(x)
    if sigma > 0:
        _blur(buf, tmp, line, sigma, kernel_size)
    # torchvision solarizes at 0.5 of 1.0: 127.5 here. One rounding back to uint8.
    threshold = np.float32(127.5) if solarize else np.float32(256.0)
    for t in range(x.size):
        v = _clamp(x[t])
        v = _MAX - v if v >= threshold else v
        pixels[t] = np.uint8(v + np.float32(0.5))


@njit(parallel=True, **_JIT)
def augment_batch(images, ops, factors, grayscale, sigma, solarize, kernel_size, chunks):
    """augment_image over a C-contiguous uint8 N x H x W x 3 batch in place, on numba's threads.

    ops (N x 4 int64), factors (N x 4 float32), grayscale (N bool), sigma (N float32, 0 = no
    blur), solarize (N bool): one row per image, as augment_image takes them. The batch is
    cut into `chunks` runs of images, each with its own scratch.
    """
    n, h, w, _ = images.shape
    chunks = max(1, min(n, chunks))
    for c in prange(chunks):
        buf = np.empty((h, 3 * w), np.float32)
        tmp = np.empty((h, 3 * w), np.float32)
        line = np.empty((w + kernel_size) * 3, np.float32)
        for i in range(c * n // chunks, (c + 1) * n // chunks):
            augment_image(images[i], ops[i], factors[i], grayscale[i], sigma[i], solarize[i],
                          kernel_size, buf, tmp, line)
    return images


class PhotometricAugment(Operation):
    """FFCV operation: one view's colour jitter, grayscale, blur and solarization, in place.

    Goes after the decoder (and flip), before ToTensor. Like BatchAugment it owns a seeded
    torch `generator` that can be re-seeded between epochs; the draws happen in the pipeline's
    own thread, the pixel work on numba's threads (the kernels release the GIL).
    """

    def __init__(self, view: ViewAugment, resolution: int, seed: int = 0):
        super().__init__()
        self.view = view
        self.kernel_size = blur_kernel_size(resolution)
        self.generator = torch.Generator().manual_seed(seed)
        self._disabled = torch.tensor([s == 0 for s in view.jitter_strengths])

    def kernel_args(self, n: int) -> tuple[np.ndarray, ...]:
        """The next n images' drawn parameters as augment_batch takes them: ops, factors,
        grayscale, sigma (0: no blur), solarize."""
        p = draw_params(self.view, n, self.generator)
        skip = ~p.jitter.unsqueeze(1) | self._disabled[p.order]
        ops = torch.where(skip, NO_OP, p.order)
        sigma = torch.where(p.blur, p.sigma, 0.0)
        return (ops.numpy(), p.factors.numpy(), p.grayscale.numpy(), sigma.numpy(),
                p.solarize.numpy())

    def generate_code(self):
        kernel_size = self.kernel_size

        def photometric(images, _):
            # A few chunks per thread: costs differ (not every image is blurred). FFCV set
            # numba's thread count for this thread to its worker count.
            return augment_batch(images, *self.kernel_args(images.shape[0]), kernel_size,
                                 4 * get_num_threads())

        return photometric

    def declare_state_and_memory(self, previous_state):
        if previous_state.shape[-1] != 3 or previous_state.dtype != np.uint8:
            raise ValueError("PhotometricAugment takes uint8 H x W x 3 images: put it after "
                             f"the decoder, before ToTensor (got {previous_state.shape}, "
                             f"{previous_state.dtype})")
        # Not jitted itself (the draws use torch's generator); it calls the jitted kernels.
        return replace(previous_state, jit_mode=False), None
