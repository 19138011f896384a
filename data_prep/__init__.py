"""Turn image folders, archives of them and public data sets into FFCV files.

`prepare(source, out)` writes `out/<split>.beton` (fields: image, label), the 1% and 10% label
subsets of the train split and `out/manifest.json`; `read_manifest(out)` reads a finished
preparation back. Every bad input raises `PrepError` with a message that says what to do.
"""

from .convert import prepare
from .errors import PrepError
from .manifest import read_manifest

__all__ = ["PrepError", "prepare", "read_manifest"]
