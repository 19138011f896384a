"""The twin network: a torchvision ResNet backbone and the projector, shared by both views.

The model only maps images to embeddings. It holds no loss and no process-group calls: the batch
normalisation of z that the authors keep in the model (`self.bn`) lives in harness.loss, which
normalises along the global batch itself. Under data parallelism the trainer calls
`convert_sync_batchnorm` before wrapping in DDP, as the authors do.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "build_backbone",
    "parse_projector",
    "build_projector",
    "TwinOutput",
    "BarlowTwins",
    "convert_sync_batchnorm",
    "backbone_state_dict",
]

# Backbones: torchvision.models builders by name. Feature widths are read off the built model's
# fc. torchvision is imported where a model is built: importing it costs about 2 s of CPU, which
# a process that only checks configs (a sweep's driver, Tune's trial actor, Train's controller)
# should not pay.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")

_PROJECTOR_SPEC = re.compile(r"\d+(-\d+)*")


def build_backbone(arch: str, small_image_stem: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet with fc removed, and its feature width.

    zero_init_residual=True as in the authors' code: each block starts as the identity.
    small_image_stem: for 32-64 px images (CIFAR, Tiny ImageNet) the 7x7 stride-2 conv and the
    max-pool would shrink a 32 px image to 8 px before the first block; they become a 3x3
    stride-1 conv and nothing (solo-learn's CIFAR recipe).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    import torchvision.models

    backbone = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    if small_image_stem:
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # The same init torchvision gives every other conv of the network.
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        backbone.maxpool = nn.Identity()
    return backbone, feature_dim


def parse_projector(spec: str) -> list[int]:
    """'8192-8192-8192' -> [8192, 8192, 8192]: the layer widths, as in the paper's notation."""
    if not isinstance(spec, str) or not _PROJECTOR_SPEC.fullmatch(spec):
        raise ValueError(f"bad projector spec {spec!r}: expected dash-separated positive "
                         "integers such as '8192-8192-8192'")
    widths = [int(w) for w in spec.split("-")]
    if min(widths) < 1:
        raise ValueError(f"bad projector spec {spec!r}: every width must be >= 1, "
                         "e.g. '8192-8192-8192'")
    return widths


def build_projector(in_dim: int, spec: str | Sequence[int], batchnorm: bool = True) -> nn.Sequential:
    """Linear(bias=False)-BN-ReLU for every layer but the last, then a bare Linear(bias=False).

    The authors' layout. The last layer has no BN here because the loss standardises z itself.
    batchnorm=False drops the hidden layers' BN and nothing else (the paper's "no BN in MLP"
    ablation): Linear(bias=False)-ReLU.
    """
    widths = parse_projector(spec) if isinstance(spec, str) else list(spec)
    if in_dim < 1 or not widths or min(widths) < 1:
        raise ValueError(f"projector needs in_dim >= 1 and positive widths, got {in_dim}, {widths}")
    sizes = [in_dim, *widths]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        # No bias: the BN that follows would cancel it.
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if batchnorm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class TwinOutput(NamedTuple):
    """features: backbone output, what evaluation uses; z: projector output, what the loss uses."""

    features: Tensor
    z: Tensor


class BarlowTwins(nn.Module):
    """Backbone + projector, applied to one view per call.

    The trainer calls it once per view (model(y_a), model(y_b)) so that each view's batch gets
    its own BN statistics, as in the authors' code, then feeds the two z to BarlowTwinsLoss.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, projector: str | Sequence[int],
                 projector_bn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = build_projector(feature_dim, projector, batchnorm=projector_bn)
        self.embedding_dim = self.projector[-1].out_features

    @classmethod
    def from_arch(cls, arch: str, projector: str, small_image_stem: bool = False,
                  projector_bn: bool = True) -> BarlowTwins:
        backbone, feature_dim = build_backbone(arch, small_image_stem)
        return cls(backbone, feature_dim, projector, projector_bn)

    @classmethod
    def from_model_config(cls, m: Mapping) -> BarlowTwins:
        """The network a `model:` config section describes, as a run's config or a checkpoint
        stores it (checkpoints written before `projector_bn` existed had BN: the default)."""
        return cls.from_arch(m["arch"], m["projector"], small_image_stem=m["small_image_stem"],
                             projector_bn=m.get("projector_bn", True))

    def forward(self, x: Tensor) -> TwinOutput:
        features = self.backbone(x)
        return TwinOutput(features=features, z=self.projector(features))


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm -> SyncBatchNorm, for world_size > 1, before wrapping in DDP.

    Per-worker BN statistics would make each worker's batch a different normalisation problem
    than the global batch (and leak which shard a sample sits in); the authors convert too.
    SyncBatchNorm only synchronises on GPU: a CPU run keeps per-worker statistics.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def backbone_state_dict(model: nn.Module) -> OrderedDict[str, Tensor]:
    """The backbone's weights with torchvision's key names, ready for resnetXX().load_state_dict.

    `torchvision.models.resnet50().load_state_dict(sd, strict=False)` then reports only fc.*
    missing. Accepts a BarlowTwins or a DDP-wrapped one. With the small-image stem conv1.weight
    is 64x3x3x3, not 64x3x7x7: it loads only into a model built with the same stem
    (build_backbone(arch, small_image_stem=True)). SyncBatchNorm keeps BN's key names.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not isinstance(model, BarlowTwins):
        raise TypeError(f"expected a BarlowTwins model, got {type(model).__name__}")
    return OrderedDict(
        (key, value.detach().cpu().clone())
        for key, value in model.backbone.state_dict().items()
        if not key.startswith("fc.")
    )
