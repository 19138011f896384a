"""The photometric half of the Barlow Twins augmentations: each sample its own draw.

FFCV 1.0.2 decodes, random-resized-crops and flips on its worker threads; it has no hue,
grayscale, blur or solarization. This module holds what both ways of adding them share: the
settings of a view (`ViewAugment`) and the per-sample random draws (`draw_params`). Then
`BatchAugment` applies them to a float batch as batched tensor ops after the transfer to the
device (the path used on a GPU); `ffcv_augment.PhotometricAugment` applies the same draws
image by image inside the FFCV pipeline, with numba (the path used on the CPU). Both follow
torchvision's functional ops (ColorJitter with a random order of its four parts per sample,
Grayscale with ITU-R 601 weights as torchvision rounds them, GaussianBlur with reflect padding,
Solarize at 0.5), and the tests compare both against them sample by sample. Either way the
loader then scales the [0, 1] result with `normalize` and the data set's own mean and std.
"""

from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ViewAugment", "ViewParams", "BatchAugment", "IMAGENET_VIEWS", "CIFAR_VIEWS",
           "VIEW_PRESETS", "preset_views", "blur_kernel_size", "draw_params", "normalize"]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewAugment:
    """Probabilities and strengths of one view's augmentations (defaults: the paper's view A)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {f.name}={value}: a probability must lie in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augmentation hue={self.hue} must lie in [0, 0.5]")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augmentation crop_scale={self.crop_scale}: need 0 < min <= max <= 1")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"augmentation crop_ratio={self.crop_ratio}: need 0 < min <= max")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"augmentation blur_sigma={self.blur_sigma}: need 0 < min <= max")

    @property
    def jitter_strengths(self) -> tuple[float, float, float, float]:
        """Brightness, contrast, saturation, hue: the order of `ViewParams.factors`; 0 = off."""
        return (self.brightness, self.contrast, self.saturation, self.hue)


# The paper's asymmetric pair: blur always on view A, rarely on B; solarization only on B.
IMAGENET_VIEWS = (ViewAugment(blur_p=1.0, solarize_p=0.0), ViewAugment(blur_p=0.1, solarize_p=0.2))
# solo-learn's CIFAR recipe: no blur at 32 px, solarization on view B only.
CIFAR_VIEWS = (ViewAugment(blur_p=0.0, solarize_p=0.0), ViewAugment(blur_p=0.0, solarize_p=0.2))
VIEW_PRESETS = {"imagenet": IMAGENET_VIEWS, "cifar": CIFAR_VIEWS}


def preset_views(name: str) -> tuple[ViewAugment, ViewAugment]:
    if name not in VIEW_PRESETS:
        raise ValueError(f"unknown augmentation preset '{name}': choose one of {sorted(VIEW_PRESETS)}")
    return VIEW_PRESETS[name]


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of about 10% of the image side (SimCLR's rule; 23 at 224 px), at least 3."""
    k = max(3, int(0.1 * resolution))
    return k if k % 2 else k + 1


class ViewParams(NamedTuple):
    """One batch's random draws, one row per sample (CPU tensors)."""

    jitter: Tensor     # bool (n,): colour jitter applied
    factors: Tensor    # float (n, 4): brightness, contrast, saturation, hue factors
    order: Tensor      # long (n, 4): the order of those four adjustments
    grayscale: Tensor  # bool (n,)
    blur: Tensor       # bool (n,)
    sigma: Tensor      # float (n,): the blur's sigma
    solarize: Tensor   # bool (n,)


def draw_params(view: ViewAugment, n: int, generator: torch.Generator) -> ViewParams:
    """Every random parameter of `n` samples, drawn as torchvision draws them per image.

    A fixed number of draws per batch, whatever the outcomes, so that a seeded generator
    gives the same stream on either path.
    """
    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    def coin(p: float) -> Tensor:
        return torch.rand(n, generator=generator) < p

    jitter = coin(view.jitter_p) & any(view.jitter_strengths)
    factors = torch.stack([
        uniform(max(0.0, 1 - view.brightness), 1 + view.brightness),
        uniform(max(0.0, 1 - view.contrast), 1 + view.contrast),
        uniform(max(0.0, 1 - view.saturation), 1 + view.saturation),
        uniform(-view.hue, view.hue),
    ], dim=1)
    # torchvision draws a new order of the four adjustments for every image.
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    grayscale = coin(view.grayscale_p)
    sigma = uniform(*view.blur_sigma)
    blur = coin(view.blur_p)
    return ViewParams(jitter, factors, order, grayscale, blur, sigma, coin(view.solarize_p))


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f).clamp_(0, 1)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate hue by f (fraction of a turn) in HSV space, as torchvision's adjust_hue.

    Hue rotation keeps HSV's value (max) and chroma (max - min), so the way back to RGB is the
    closed form channel = max - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6 with
    n = 5, 3, 1 for r, g, b: a few elementwise ops instead of six masked sectors.
    """
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    cr = maxc - minc
    cr_div = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h6 = torch.remainder(hr + hg + hb + 6.0 * f.view(-1, 1, 1), 6.0)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - cr * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable blur with one sigma per sample: a grouped convolution over the batch."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k1d = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k1d = (k1d / k1d.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k1d.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, k1d.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


class BatchAugment(torch.nn.Module):
    """Colour jitter, grayscale, blur and solarization for a float batch in [0, 1], N x 3 x H x W.

    Random parameters come from a CPU generator (seeded per loader, so runs repeat), and only
    the samples that drew an operation are computed for it.
    """

    def __init__(self, view: ViewAugment, resolution: int, seed: int = 0):
        super().__init__()
        self.view = view
        self.kernel_size = blur_kernel_size(resolution)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        p = draw_params(self.view, x.shape[0], self.generator)
        if p.jitter.any():
            for stage in range(4):
                for op, strength in enumerate(self.view.jitter_strengths):
                    if strength == 0:
                        continue
                    self._apply(x, p.jitter & (p.order[:, stage] == op),
                                lambda s, idx, op=op: _JITTER_OPS[op](s, self._param(
                                    p.factors[idx, op], s, op == 3)))
        self._apply(x, p.grayscale, lambda s, idx: _gray(s).expand_as(s))
        self._apply(x, p.blur,
                    lambda s, idx: _gaussian_blur(s, p.sigma[idx].to(s), self.kernel_size))
        self._apply(x, p.solarize, lambda s, idx: torch.where(s >= 0.5, 1.0 - s, s))
        return x

    @staticmethod
    def _param(f: Tensor, like: Tensor, flat: bool) -> Tensor:
        f = f.to(device=like.device, dtype=like.dtype)
        return f if flat else f.view(-1, 1, 1, 1)

    @staticmethod
    def _apply(x: Tensor, mask: Tensor, op) -> None:
        """x[mask] = op(x[mask]) in place; all-or-nothing masks skip the gather."""
        count = int(mask.sum())
        if count == 0:
            return
        if count == x.shape[0]:
            idx = torch.arange(count)
            x.copy_(op(x, idx))
            return
        idx = mask.nonzero().squeeze(1)
        dev_idx = idx.to(x.device)
        x.index_copy_(0, dev_idx, op(x.index_select(0, dev_idx), idx))


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[0, 1] RGB to the network's input scale, (x - mean) / std per channel, in place.

    The loaders pass the data set's own statistics (loaders.dataset_normalization), on the
    CPU and the GPU path alike.
    """
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
