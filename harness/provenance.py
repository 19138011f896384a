"""What every result records beside it: the versions of the libraries that produced it."""

import platform
from importlib import metadata

__all__ = ["DISTRIBUTIONS", "library_versions"]

DISTRIBUTIONS = ("torch", "torchvision", "ray", "ffcv", "numpy", "numba", "pillow")


def library_versions(distributions=DISTRIBUTIONS) -> dict:
    """{"python": ..., dist: version or None}. Installed metadata, not __version__: ffcv 1.0.2
    still reports "0.0.3rc1"."""
    found = {"python": platform.python_version()}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found
