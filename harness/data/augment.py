"""The photometric half of the Barlow Twins augmentations, batched, each sample its own draw.

FFCV 1.0.2 decodes, random-resized-crops and flips on its worker threads; it has no hue,
grayscale, blur or solarization. Those run here, on whole batches after the transfer to the
device (the GPU where there is one), with every random parameter drawn per sample, so that a
batch sees the same distribution as torchvision applied image by image. The semantics follow
torchvision's functional ops (ColorJitter with a random order of its four parts per sample,
Grayscale with ITU-R 601 weights as torchvision rounds them, GaussianBlur with reflect padding, Solarize at 0.5), and the
tests compare against them sample by sample.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ViewAugment", "BatchAugment", "IMAGENET_VIEWS", "CIFAR_VIEWS", "blur_kernel_size"]

# ImageNet statistics: the convention of every published Barlow Twins evaluation.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
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


# The paper's asymmetric pair: blur always on view A, rarely on B; solarization only on B.
IMAGENET_VIEWS = (ViewAugment(blur_p=1.0, solarize_p=0.0), ViewAugment(blur_p=0.1, solarize_p=0.2))
# solo-learn's CIFAR recipe: no blur at 32 px, solarization on view B only.
CIFAR_VIEWS = (ViewAugment(blur_p=0.0, solarize_p=0.0), ViewAugment(blur_p=0.0, solarize_p=0.2))


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of about 10% of the image side (SimCLR's rule; 23 at 224 px), at least 3."""
    k = max(3, int(0.1 * resolution))
    return k if k % 2 else k + 1


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

    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=self.generator) * (hi - lo) + lo

    def _coin(self, n: int, p: float) -> Tensor:
        return torch.rand(n, generator=self.generator) < p

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        v, n = self.view, x.shape[0]
        strengths = (v.brightness, v.contrast, v.saturation, v.hue)
        jitter = self._coin(n, v.jitter_p) if any(strengths) else torch.zeros(n, dtype=torch.bool)
        if jitter.any():
            factors = torch.stack([
                self._uniform(n, max(0.0, 1 - v.brightness), 1 + v.brightness),
                self._uniform(n, max(0.0, 1 - v.contrast), 1 + v.contrast),
                self._uniform(n, max(0.0, 1 - v.saturation), 1 + v.saturation),
                self._uniform(n, -v.hue, v.hue),
            ], dim=1)
            # torchvision draws a new order of the four adjustments for every image.
            order = torch.argsort(torch.rand(n, 4, generator=self.generator), dim=1)
            for stage in range(4):
                for op in range(4):
                    if strengths[op] == 0:
                        continue
                    self._apply(x, jitter & (order[:, stage] == op),
                                lambda s, idx, op=op: _JITTER_OPS[op](s, self._param(
                                    factors[idx, op], s, op == 3)))
        self._apply(x, self._coin(n, v.grayscale_p), lambda s, idx: _gray(s).expand_as(s))
        if v.blur_p > 0:
            sigma = self._uniform(n, *v.blur_sigma)
            self._apply(x, self._coin(n, v.blur_p),
                        lambda s, idx: _gaussian_blur(s, sigma[idx].to(s), self.kernel_size))
        self._apply(x, self._coin(n, v.solarize_p),
                    lambda s, idx: torch.where(s >= 0.5, 1.0 - s, s))
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


def normalize(x: Tensor) -> Tensor:
    """[0, 1] RGB to the network's input scale (ImageNet mean / std), in place."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
