"""FFCV's sample reader compiled once per process (and kept in numba's disk cache), not once
per loader.

Every FFCV 1.0.2 `Loader` (os_cache=True, as the harness builds them) asks its
`OSCacheManager.compile_reader()` for the function its pipeline reads a sample's bytes with, and
that method compiles a new closure with numba each time, eagerly, inside `Loader.__init__`,
in every training worker, evaluation, online probe and view grid (2.0 s of a view grid's 5.3 s
under cProfile; measured without the profiler, a process's first loader starts in 0.82x the
CPU with the cached reader, and its later loaders skip the compile: BENCHMARKS.md). The
function is always the same two lines, so `install()` has the method return one module-level
function instead, compiled on first use with numba's disk cache
(`cache=True`), for the manager's own state type and with FFCV's own compile options:
later loaders in the process reuse it, and later processes load it from the cache.
benchmarks/loader_startup.py measures a loader's start-up.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.pipeline.compiler import Compiler

__all__ = ["install", "read_sample"]

_compiled: dict = {}
_ffcv_compile_reader = OSCacheManager.compile_reader


def read_sample(address, mem_state):
    """The bytes of the sample at `address`: FFCV's OSCacheManager reader, as written there."""
    size = mem_state[2][np.searchsorted(mem_state[1], address)]
    return mem_state[0][address:address + size]


def _compile_reader(manager: OSCacheManager):
    if not Compiler.is_enabled:  # FFCV's pure-Python mode (debugging): its own behaviour
        return _ffcv_compile_reader(manager)
    signature = nb.uint8[::1](nb.uint64, manager.state_type)
    if signature not in _compiled:
        _compiled[signature] = nb.njit(signature, fastmath=True, nogil=True,
                                       error_model="numpy", cache=True)(read_sample)
    return _compiled[signature]


def install() -> None:
    """Make every OSCacheManager (and so every os_cache loader) use the cached reader."""
    OSCacheManager.compile_reader = _compile_reader
