"""Importing ffcv without its 5 s of numba compilation.

`ffcv.fields.rgb_image` builds its table of image modes at import as a `numba.typed.Dict`
(`IMAGE_MODES['jpg'] = 0`, `IMAGE_MODES['raw'] = 1`), and numba compiles that dictionary's
methods in every process: about 5 s of CPU, in each training worker, each evaluation and each
`harness prep`, before any image is read. FFCV only reads the table from Python (when it
generates a decoder's code and when its writer encodes an image), never from compiled code, so
a plain dict with the same entries behaves the same. `install()` puts a finder on
`sys.meta_path` that imports that one module with `numba.typed.Dict` standing as `dict`, and
puts the real one back at once; every other module, ffcv's own included, sees numba unchanged.

`harness/__init__.py` installs it, so any process that imports harness (or data_prep) before
ffcv gets the quick import; one that imported ffcv first keeps FFCV's own. The module imports
only the standard library: installing it costs nothing in processes that never load ffcv.
benchmarks/loader_startup.py measures the import both ways.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

__all__ = ["install", "TARGET"]

TARGET = "ffcv.fields.rgb_image"
# What the target imports: imported first, with numba as it is, so that nothing but the
# target itself runs while `numba.typed.Dict` is swapped.
_DEPENDENCIES = ("numba.typed", "ffcv.fields.base", "ffcv.pipeline.operation",
                 "ffcv.pipeline.state", "ffcv.pipeline.compiler",
                 "ffcv.pipeline.allocation_query", "ffcv.libffcv")


class _PlainDictLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        for name in _DEPENDENCIES:
            importlib.import_module(name)
        typed = sys.modules["numba.typed"]
        typed_dict = typed.Dict
        typed.Dict = dict
        try:
            self._loader.exec_module(module)
        finally:
            typed.Dict = typed_dict


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PlainDictLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Import ffcv's image field quickly from now on (once per process; idempotent)."""
    if TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
