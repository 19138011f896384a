"""Turn image folders, archives of them and public data sets into FFCV files.

`prepare(source, out)` writes `out/<split>.beton` (fields: image, label), a validation list
carved from train, the 1% and 10% label subsets of the rest of train (or subsets imported from
published lists, data_prep.subset_lists) and `out/manifest.json`, which also holds the channel
mean and std every loader normalises with (data_prep.holdout says which images each role
reads); `read_manifest(out)` reads a finished preparation back. Every bad input raises
`PrepError` with a message that says what to do.
"""

import harness  # noqa: F401 - first: ffcv imports quickly in this process (harness.ffcv_import)

from .errors import PrepError
from .holdout import Part, fit_part, subset_part, test_part, validation_part
from .manifest import read_manifest

__all__ = ["PrepError", "prepare", "read_manifest", "Part", "fit_part", "validation_part",
           "subset_part", "test_part"]


def __getattr__(name: str):
    """`prepare` is imported on first use: it brings ffcv, numba and OpenCV,
    which a process that only reads a manifest should not pay."""
    if name != "prepare":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    # ffcv's import sets torch to one thread (its Compiler's default): keep the caller's count.
    threads = torch.get_num_threads()
    from .convert import prepare

    torch.set_num_threads(threads)
    globals()["prepare"] = prepare
    return prepare
