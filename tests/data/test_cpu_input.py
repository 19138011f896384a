"""harness.data.cpu_input against the formula written out in torch, on the strides FFCV gives."""

import pytest
import torch

from harness.data.cpu_input import InputBuffers, normalized_input

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def _reference(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.double() / 255.0 - mean.double()) / std.double()


@pytest.mark.parametrize("layout", ["nchw", "nhwc view", "one view of two"])
def test_equals_the_formula_on_every_layout_and_copies(layout):
    g = torch.Generator().manual_seed(0)
    if layout == "nchw":
        images = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8, generator=g)
    elif layout == "nhwc view":    # ToTensor + ToTorchImage on the CPU: a permuted view
        images = torch.randint(0, 256, (5, 7, 9, 3), dtype=torch.uint8,
                               generator=g).permute(0, 3, 1, 2)
    else:                          # the one-decode batch, N x 2 x H x W x 3: view b of it
        both = torch.randint(0, 256, (5, 2, 7, 9, 3), dtype=torch.uint8, generator=g)
        images = both.permute(1, 0, 4, 2, 3)[1]
    out = normalized_input(images, MEAN, STD)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (5, 3, 7, 9)
    torch.testing.assert_close(out.double(), _reference(images), atol=2e-6, rtol=0)
    # Extremes land where the formula puts them: 0 -> -mean/std, 255 -> (1 - mean)/std.
    assert out.min() < -1.8 and out.max() > 2.0
    before = images.clone()
    out.zero_()
    assert torch.equal(images, before)   # a new tensor: nothing aliases FFCV's buffer


def test_refuses_what_is_not_a_uint8_cpu_batch():
    with pytest.raises(ValueError, match="uint8 N x C x H x W CPU tensor"):
        normalized_input(torch.zeros(2, 3, 4, 4), MEAN, STD)
    with pytest.raises(ValueError, match="uint8 N x C x H x W CPU tensor"):
        normalized_input(torch.zeros(3, 4, 4, dtype=torch.uint8), MEAN, STD)


def test_buffers_come_back_only_once_nothing_refers_to_them():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    buffers = InputBuffers(keep=2)
    first = normalized_input(images, MEAN, STD, buffers)
    view = first[1:3].reshape(-1)       # a view alone keeps the array taken
    kept = view.untyped_storage().data_ptr()
    del first
    second = normalized_input(images, MEAN, STD, buffers)
    assert second.untyped_storage().data_ptr() != kept
    del view                             # nothing refers to the first array any more
    third = normalized_input(images, MEAN, STD, buffers)
    assert third.untyped_storage().data_ptr() == kept   # handed out again, not allocated
    assert torch.equal(third, second)
    # Past `keep` arrays in use, new ones are made (and not kept).
    fourth = normalized_input(images, MEAN, STD, buffers)
    assert len({t.untyped_storage().data_ptr() for t in (second, third, fourth)}) == 3
    # A free array of another shape (an epoch's short last batch) makes way.
    del second, third, fourth
    short = normalized_input(images[:3], MEAN, STD, buffers)
    assert short.shape == (3, 3, 5, 5)
    torch.testing.assert_close(short.double(), _reference(images[:3]), atol=2e-6, rtol=0)
