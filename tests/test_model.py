"""harness.model: shapes, the small-image stem, the projector spec, and the exported backbone."""

import pytest
import torch
import torchvision
from torch import nn

from harness.model import (
    BarlowTwins,
    backbone_state_dict,
    build_backbone,
    build_projector,
    convert_sync_batchnorm,
    parse_projector,
)


@pytest.fixture(scope="module")
def resnet18_small():
    torch.manual_seed(0)
    return BarlowTwins.from_arch("resnet18", projector="64-32", small_image_stem=True)


@pytest.fixture(scope="module")
def resnet50_standard():
    torch.manual_seed(0)
    return BarlowTwins.from_arch("resnet50", projector="64-64-32")


def test_resnet18_small_stem_on_32px(resnet18_small):
    out = resnet18_small(torch.randn(3, 3, 32, 32))
    assert out.features.shape == (3, 512) and out.z.shape == (3, 32)
    assert resnet18_small.feature_dim == 512 and resnet18_small.embedding_dim == 32
    conv1 = resnet18_small.backbone.conv1
    assert conv1.weight.shape == (64, 3, 3, 3)
    assert conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None and isinstance(resnet18_small.backbone.maxpool, nn.Identity)


def test_resnet50_standard_on_64px(resnet50_standard):
    out = resnet50_standard(torch.randn(2, 3, 64, 64))
    assert out.features.shape == (2, 2048) and out.z.shape == (2, 32)
    assert resnet50_standard.backbone.conv1.weight.shape == (64, 3, 7, 7)


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                       ("resnet101", 2048)])
def test_feature_dims(arch, dim):
    backbone, feature_dim = build_backbone(arch)
    assert feature_dim == dim and isinstance(backbone.fc, nn.Identity)


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="resnet18.*resnet50"):
        build_backbone("vit_b_16")


def test_zero_init_residual(resnet18_small, resnet50_standard):
    # Each residual branch's last BN starts at gamma = 0, so every block starts as the identity.
    def blocks(model):
        return [b for i in range(1, 5) for b in getattr(model.backbone, f"layer{i}")]

    blocks18, blocks50 = blocks(resnet18_small), blocks(resnet50_standard)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks18)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks50)
    assert torch.count_nonzero(resnet50_standard.backbone.bn1.weight) > 0


@pytest.mark.parametrize("spec, widths", [("8192-8192-8192", [8192, 8192, 8192]),
                                          ("8192-8192", [8192, 8192]), ("16", [16]),
                                          ("2048-2048-2048", [2048] * 3)])
def test_parse_projector_good(spec, widths):
    assert parse_projector(spec) == widths


@pytest.mark.parametrize("spec", ["0-5", "abc", "", "12--3", "-5", "5-", " 8", "8.0", "8,8", None])
def test_parse_projector_bad(spec):
    with pytest.raises(ValueError, match="positive integers|must be >= 1") as err:
        parse_projector(spec)
    assert repr(spec) in str(err.value)


def test_projector_layout_matches_authors():
    proj = build_projector(16, "8-8-4")
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU,
                     nn.Linear]
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 4)]
    assert all(m.bias is None for m in linears)


def test_projector_without_batchnorm_drops_only_the_batchnorm():
    """The paper's "no BN in MLP": the same Linear(bias=False) layers and ReLUs, no BN."""
    proj = build_projector(16, "8-8-4", batchnorm=False)
    assert [type(m) for m in proj] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 4)]
    assert all(m.bias is None for m in linears)


def test_a_stored_model_config_without_projector_bn_has_batchnorm():
    """Checkpoints written before model.projector_bn existed load as what they were."""
    old = {"arch": "resnet18", "projector": "8-4", "small_image_stem": True}
    assert any(isinstance(m, nn.BatchNorm1d) for m in BarlowTwins.from_model_config(old).projector)
    new = {**old, "projector_bn": False}
    assert not any(isinstance(m, nn.BatchNorm1d)
                   for m in BarlowTwins.from_model_config(new).projector)


@pytest.mark.parametrize("arch, builder", [("resnet18", torchvision.models.resnet18),
                                           ("resnet50", torchvision.models.resnet50)])
def test_backbone_state_dict_loads_into_torchvision(arch, builder):
    torch.manual_seed(0)
    model = BarlowTwins.from_arch(arch, projector="32")
    with torch.no_grad():  # make the running stats non-default, so loading them is checked too
        model(torch.randn(2, 3, 64, 64))
    sd = backbone_state_dict(model)
    target = builder()
    result = target.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    target.fc = nn.Identity()
    model.eval(), target.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), model.backbone(x))


def test_small_stem_state_dict_loads_only_into_small_stem(resnet18_small):
    sd = backbone_state_dict(resnet18_small)
    same_stem, _ = build_backbone("resnet18", small_image_stem=True)
    same_stem.load_state_dict(sd)  # strict: every key matches
    with pytest.raises(RuntimeError, match="conv1.weight"):
        torchvision.models.resnet18().load_state_dict(sd, strict=False)


def test_backbone_state_dict_rejects_other_models():
    with pytest.raises(TypeError):
        backbone_state_dict(nn.Linear(2, 2))


def test_convert_sync_batchnorm_keeps_state_dict_keys():
    torch.manual_seed(0)
    model = BarlowTwins.from_arch("resnet18", projector="32-16", small_image_stem=True)
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in converted.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert list(converted.state_dict()) == keys
    expected = [k.removeprefix("backbone.") for k in keys if k.startswith("backbone.")]
    assert list(backbone_state_dict(converted)) == expected
