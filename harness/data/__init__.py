"""FFCV data loading: two-view pretraining, labelled training and evaluation loaders, each
normalising with its data set's own channel statistics (from `harness prep`'s manifest).

The loaders and the view grids are imported on first use (PEP 562): they bring ffcv, numba
and OpenCV (about 0.5 s of CPU per process once torch is loaded, through harness.ffcv_import),
which a process that only reads configs (a sweep's driver, a CLI that rejects a bad file)
should not pay.
"""

from harness.lazy import lazy_exports

from .augment import (CIFAR_VIEWS, IMAGENET_VIEWS, VIEW_PRESETS, BatchAugment, ViewAugment,
                      preset_views)

_LAZY = {
    "LabelledLoader": "loaders", "Normalization": "prepared", "TwoViewBatch": "loaders",
    "TwoViewLoader": "loaders", "beton_path": "prepared", "dataset_normalization": "prepared",
    "default_center_crop_ratio": "loaders", "eval_loader": "loaders",
    "labelled_loader": "loaders", "two_view_loader": "loaders",
    "save_view_grid": "views", "view_grid": "views",
}

__all__ = ["CIFAR_VIEWS", "IMAGENET_VIEWS", "BatchAugment", "ViewAugment", "VIEW_PRESETS",
           "preset_views", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
