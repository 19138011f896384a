"""Barlow Twins benchmarking harness: FFCV data, Ray Train pretraining, Ray Tune sweeps."""

from harness import ffcv_import

__version__ = "0.1.0"

ffcv_import.install()  # before any ffcv import: saves numba's 5 s per process (harness.ffcv_import)
