"""Package attributes imported on first use (PEP 562), for packages whose modules bring ffcv.

Importing ffcv brings numba and OpenCV too (about 0.5 s of CPU per process once torch is loaded,
through harness.ffcv_import; 5 s without it); a process that only reads configs (a sweep's
driver, Tune's trial actor, Train's controller, a CLI that rejects a file) must not pay it
because it imported a package's light half.
"""

import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]):
    """(__getattr__, __dir__) for `package`: each name in `where` is read from its module
    (relative to the package) the first time it is asked for, then kept."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace.get("__all__", where))

    return __getattr__, __dir__
