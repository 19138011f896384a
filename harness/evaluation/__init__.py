"""Evaluation protocols of a pretrained backbone: linear (fast / paper), kNN, semi, transfer.

Imported on first use (PEP 562): the protocols bring ffcv's loaders (about 5 s of CPU per
process), which a sweep's driver, reading only the settings, should not pay.
"""

import importlib

_LAZY = {"Backbone": "backbone", "load_backbone": "backbone", "random_backbone": "backbone",
         "evaluate": "runner", "plan": "runner", "PROTOCOLS": "settings",
         "EvalSettings": "settings", "parse_protocols": "settings"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
