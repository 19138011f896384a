"""Both photometric paths against torchvision's functional ops, image by image.

The batched tensor ops (augment.BatchAugment) work on floats; the numba kernels
(ffcv_augment) on uint8 images, rounded once at the end: they must give the float result
rounded to the nearest level.
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from harness.data.augment import (IMAGENET_VIEWS, BatchAugment, ViewAugment, _brightness, _contrast,
                                  _gaussian_blur, _gray, _hue, _saturation, blur_kernel_size)
from harness.data.ffcv_augment import NO_OP, PhotometricAugment, augment_batch

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


@pytest.fixture
def images():
    # Real structure matters for hue/blur (flat noise hides errors less well than gradients).
    torch.manual_seed(0)
    x = torch.rand(6, 3, 24, 24)
    ramp = torch.linspace(0, 1, 24)
    x[0] = ramp.view(1, 1, -1).expand(3, 24, 24)  # gray ramp: zero chroma
    x[1, 0] = ramp.view(1, -1)                     # red gradient over constant g, b
    return x


@pytest.mark.parametrize("op, ref, values", [
    (_brightness, TF.adjust_brightness, (0.6, 0.9, 1.0, 1.2, 1.4, 0.0)),
    (_contrast, TF.adjust_contrast, (0.6, 0.9, 1.0, 1.2, 1.4, 0.0)),
    (_saturation, TF.adjust_saturation, (0.8, 0.9, 1.0, 1.1, 1.2, 0.0)),
])
def test_colour_ops_match_torchvision(images, op, ref, values):
    f = torch.tensor(values).view(-1, 1, 1, 1)
    expected = torch.stack([ref(img, v) for img, v in zip(images, values)])
    torch.testing.assert_close(op(images.clone(), f), expected, atol=1e-5, rtol=0)


def test_hue_matches_torchvision(images):
    values = (-0.5, -0.1, 0.0, 0.05, 0.1, 0.5)
    expected = torch.stack([TF.adjust_hue(img, v) for img, v in zip(images, values)])
    torch.testing.assert_close(_hue(images.clone(), torch.tensor(values)), expected, atol=1e-5, rtol=0)


def test_blur_and_grayscale_match_torchvision(images):
    sigmas = (0.1, 0.5, 1.0, 1.5, 2.0, 0.3)
    k = blur_kernel_size(224)
    assert k == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(64) == 7
    expected = torch.stack([TF.gaussian_blur(img, [7, 7], [s, s]) for img, s in zip(images, sigmas)])
    torch.testing.assert_close(_gaussian_blur(images.clone(), torch.tensor(sigmas), 7), expected,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(_gray(images), TF.rgb_to_grayscale(images), atol=1e-6, rtol=0)


def test_probability_zero_is_identity(images):
    out = BatchAugment(ViewAugment(**OFF), 24)(images.clone())
    assert torch.equal(out, images)


@pytest.mark.parametrize("name, check", [
    ("grayscale_p", lambda x, y: torch.allclose(y, TF.rgb_to_grayscale(x).expand_as(x), atol=1e-6)),
    ("solarize_p", lambda x, y: torch.equal(y, TF.solarize(x, 0.5))),
    ("jitter_p", lambda x, y: all(not torch.allclose(a, b) for a, b in zip(x[2:], y[2:]))),
])
def test_probability_one_always_applies(images, name, check):
    out = BatchAugment(ViewAugment(**{**OFF, name: 1.0}), 24)(images.clone())
    assert check(images, out)


def test_blur_probability_one_uses_the_drawn_sigma(images):
    view = ViewAugment(**{**OFF, "blur_p": 1.0, "blur_sigma": (1.5, 1.5)})
    out = BatchAugment(view, 24)(images.clone())
    k = blur_kernel_size(24)
    expected = torch.stack([TF.gaussian_blur(img, [k, k], [1.5, 1.5]) for img in images])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_each_sample_draws_its_own_parameters():
    x = torch.rand(1, 3, 16, 16).expand(256, 3, 16, 16).clone()
    gray = BatchAugment(ViewAugment(**{**OFF, "grayscale_p": 0.5}), 16)(x.clone())
    is_gray = (gray[:, 0] == gray[:, 1]).flatten(1).all(1)
    assert 80 < int(is_gray.sum()) < 176  # binomial(256, 0.5): mean 128, sd 8

    jitter = BatchAugment(ViewAugment(**{**OFF, "jitter_p": 1.0}), 16)(x.clone())
    assert len(torch.unique(jitter.flatten(1), dim=0)) == 256  # every image its own factors


def test_seeded_and_in_range(images):
    view = ViewAugment(blur_p=0.5, solarize_p=0.5)
    a = BatchAugment(view, 24, seed=3)(images.clone())
    b = BatchAugment(view, 24, seed=3)(images.clone())
    c = BatchAugment(view, 24, seed=4)(images.clone())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("bad", [
    dict(jitter_p=1.5), dict(solarize_p=-0.1), dict(hue=0.7), dict(brightness=-1),
    dict(crop_scale=(0.5, 0.2)), dict(crop_scale=(0.0, 1.0)), dict(blur_sigma=(0.0, 1.0)),
])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ViewAugment(**bad)


# --- the numba kernels (the FFCV path) ------------------------------------------------------

TV_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.fixture(scope="module")
def real_images(imagenette_folder):
    """Six real photographs, centre 96 px (room for the 23-tap blur), uint8 N x H x W x 3."""
    paths = sorted((imagenette_folder / "train").rglob("*.JPEG"))[::20][:6]
    out = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        out.append(np.asarray(img.crop((w // 2 - 48, h // 2 - 48, w // 2 + 48, h // 2 + 48))))
    return np.stack(out)


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _numba(images: np.ndarray, ops=None, factors=None, grayscale=None, sigma=None,
           solarize=None, kernel_size: int = 3) -> np.ndarray:
    """augment_batch on a copy, every parameter given explicitly (default: off)."""
    n = len(images)
    ops = np.full((n, 4), NO_OP, np.int64) if ops is None else np.asarray(ops, np.int64)
    factors = np.zeros((n, 4), np.float32) if factors is None else np.asarray(factors, np.float32)
    flags = [np.zeros(n, bool) if a is None else np.asarray(a, bool) for a in (grayscale, solarize)]
    sigma = np.zeros(n, np.float32) if sigma is None else np.asarray(sigma, np.float32)
    return augment_batch(images.copy(), ops, factors, flags[0], sigma, flags[1], kernel_size, 4)


def _rounds_to(ours: np.ndarray, reference: torch.Tensor) -> bool:
    """ours (uint8) is the float reference (in [0, 1]) rounded: half a level + float error."""
    levels = (reference * 255).permute(0, 2, 3, 1).double().numpy()
    return float(np.abs(ours - levels).max()) <= 0.5 + 0.01


@pytest.mark.parametrize("op, values", [
    (0, (0.6, 0.9, 1.0, 1.2, 1.4, 0.0)),
    (1, (0.6, 0.9, 1.0, 1.2, 1.4, 0.0)),
    (2, (0.8, 0.9, 1.0, 1.1, 1.2, 0.0)),
    (3, (-0.5, -0.1, 0.0, 0.05, 0.1, 0.5)),
])
def test_numba_jitter_matches_torchvision(real_images, op, values):
    ops = np.full((6, 4), NO_OP)
    ops[:, 1] = op
    factors = np.zeros((6, 4))
    factors[:, op] = values
    x = _to_float(real_images)
    expected = torch.stack([TV_JITTER[op](img, v) for img, v in zip(x, values)])
    assert _rounds_to(_numba(real_images, ops, factors), expected)


def test_numba_blur_grayscale_solarize_match_torchvision(real_images):
    x = _to_float(real_images)
    sigmas = (0.1, 0.5, 1.0, 1.5, 2.0, 0.3)
    for k in (3, 23):
        expected = torch.stack([TF.gaussian_blur(img, [k, k], [s, s]) for img, s in zip(x, sigmas)])
        assert _rounds_to(_numba(real_images, sigma=sigmas, kernel_size=k), expected)
    gray = _numba(real_images, grayscale=[True] * 6)
    assert _rounds_to(gray, TF.rgb_to_grayscale(x, num_output_channels=3))
    solarized = _numba(real_images, solarize=[True] * 6)
    expected = TF.solarize(torch.from_numpy(real_images).permute(0, 3, 1, 2), 128)
    assert np.array_equal(solarized, expected.permute(0, 2, 3, 1).numpy())  # exact on uint8


def test_numba_full_sequence_matches_torchvision(real_images, images):
    """Random orders and factors, then grayscale, blur, solarize: as torchvision composes them."""
    structured = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    rng = np.random.default_rng(0)
    for batch in (real_images, np.ascontiguousarray(structured)):
        n, k = len(batch), 7
        ops = np.stack([rng.permutation(4) for _ in range(n)])
        factors = np.stack([rng.uniform(0.6, 1.4, n), rng.uniform(0.6, 1.4, n),
                            rng.uniform(0.8, 1.2, n), rng.uniform(-0.1, 0.1, n)], axis=1)
        grayscale, solarize = rng.random(n) < 0.5, rng.random(n) < 0.5
        sigma = np.where(rng.random(n) < 0.5, rng.uniform(0.1, 2.0, n), 0.0)
        ours = _numba(batch, ops, factors, grayscale, sigma, solarize, kernel_size=k)
        expected = []
        for i, img in enumerate(_to_float(batch)):
            for op in ops[i]:
                img = TV_JITTER[op](img, float(np.float32(factors[i, op])))
            if grayscale[i]:
                img = TF.rgb_to_grayscale(img, num_output_channels=3)
            if sigma[i] > 0:
                img = TF.gaussian_blur(img, [k, k], [float(np.float32(sigma[i]))] * 2)
            expected.append(TF.solarize(img, 0.5) if solarize[i] else img)
        assert _rounds_to(ours, torch.stack(expected))


def _photometric(view: ViewAugment, images: np.ndarray, resolution: int, seed: int = 0):
    """The FFCV operation's code, run as FFCV runs it on a decoded uint8 batch."""
    return PhotometricAugment(view, resolution, seed=seed).generate_code()(images.copy(), None)


@pytest.mark.parametrize("view", [
    IMAGENET_VIEWS[0], IMAGENET_VIEWS[1],
    ViewAugment(saturation=0.0, hue=0.0, grayscale_p=0.5, blur_p=0.5, solarize_p=0.5),
], ids=["imagenet-a", "imagenet-b", "some-strengths-off"])
def test_ffcv_operation_makes_the_same_views_as_batch_augment(real_images, view):
    """One seed, one stream of draws: both paths make the same images, up to uint8 rounding."""
    batch = np.concatenate([real_images] * 6)  # 36 images: every branch drawn several times
    ours = _photometric(view, batch, resolution=96, seed=5)
    expected = BatchAugment(view, 96, seed=5)(_to_float(batch))
    assert _rounds_to(ours, expected)
    assert not np.array_equal(ours, batch)


def test_ffcv_operation_probability_zero_is_identity_and_one_applies(real_images):
    assert np.array_equal(_photometric(ViewAugment(**OFF), real_images, 96), real_images)
    gray = _photometric(ViewAugment(**{**OFF, "grayscale_p": 1.0}), real_images, 96)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    solarized = _photometric(ViewAugment(**{**OFF, "solarize_p": 1.0}), real_images, 96)
    assert np.array_equal(solarized, np.where(real_images >= 128, 255 - real_images, real_images))
    jittered = _photometric(ViewAugment(**{**OFF, "jitter_p": 1.0}), real_images, 96)
    assert all(not np.array_equal(a, b) for a, b in zip(jittered, real_images))


def test_ffcv_operation_is_seeded(real_images):
    view = ViewAugment(blur_p=0.5, solarize_p=0.5)
    a, b, c = (_photometric(view, real_images, 96, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
