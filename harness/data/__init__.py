"""FFCV data loading: two-view pretraining, labelled training and evaluation loaders."""

from .augment import CIFAR_VIEWS, IMAGENET_VIEWS, BatchAugment, ViewAugment
from .loaders import (LabelledLoader, TwoViewBatch, TwoViewLoader, beton_path,
                      default_center_crop_ratio, eval_loader, labelled_loader, two_view_loader)
from .views import VIEW_PRESETS, preset_views, save_view_grid, view_grid

__all__ = [
    "CIFAR_VIEWS", "IMAGENET_VIEWS", "BatchAugment", "ViewAugment", "LabelledLoader",
    "TwoViewBatch", "TwoViewLoader", "beton_path", "default_center_crop_ratio", "eval_loader",
    "labelled_loader", "two_view_loader", "VIEW_PRESETS", "preset_views", "save_view_grid",
    "view_grid",
]
