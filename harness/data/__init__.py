"""FFCV data loading: two-view pretraining, labelled training and evaluation loaders, each
normalising with its data set's own channel statistics (from `harness prep`'s manifest)."""

from .augment import CIFAR_VIEWS, IMAGENET_VIEWS, BatchAugment, ViewAugment
from .loaders import (LabelledLoader, Normalization, TwoViewBatch, TwoViewLoader, beton_path,
                      dataset_normalization, default_center_crop_ratio, eval_loader,
                      labelled_loader, two_view_loader)
from .views import VIEW_PRESETS, preset_views, save_view_grid, view_grid

__all__ = [
    "CIFAR_VIEWS", "IMAGENET_VIEWS", "BatchAugment", "ViewAugment", "LabelledLoader",
    "Normalization", "TwoViewBatch", "TwoViewLoader", "beton_path", "dataset_normalization",
    "default_center_crop_ratio", "eval_loader", "labelled_loader", "two_view_loader",
    "VIEW_PRESETS", "preset_views", "save_view_grid", "view_grid",
]
