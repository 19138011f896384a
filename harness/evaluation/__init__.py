"""Evaluation protocols of a pretrained backbone: linear (fast / paper), kNN, semi, transfer.

Imported on first use (PEP 562): the protocols bring ffcv's loaders (ffcv, numba, OpenCV),
which a sweep's driver, reading only the settings, should not pay.
"""

from harness.lazy import lazy_exports

_LAZY = {"Backbone": "backbone", "load_backbone": "backbone", "random_backbone": "backbone",
         "evaluate": "runner", "plan": "runner", "PROTOCOLS": "settings",
         "EvalSettings": "settings", "parse_protocols": "settings"}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
