"""Barlow Twins benchmarking harness: FFCV data, Ray Train pretraining, Ray Tune sweeps."""

__version__ = "0.1.0"
