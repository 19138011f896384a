"""Batched per-sample augmentations against torchvision's functional ops, image by image."""

import pytest
import torch
import torchvision.transforms.functional as TF

from harness.data.augment import (BatchAugment, ViewAugment, _brightness, _contrast,
                                  _gaussian_blur, _gray, _hue, _saturation, blur_kernel_size)

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
