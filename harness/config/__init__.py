"""The pretraining configuration: its schema (schema.py: one frozen, checked dataclass per
section, and the Section machinery the evaluation settings and sweep files are built on) and
its files (files.py: YAML with `base:`, `--set key=value` overrides).

    cfg = load_config("experiments/cifar10.yaml", ["optimizer.lr_weights=0.2", "batch_size=512"])
"""

from harness.config.files import load_config, parse_overrides, read_yaml
from harness.config.schema import (ConfigError, DataConfig, LossConfig, ModelConfig,
                                   OptimizerConfig, PretrainConfig, ProbeConfig, RunSettings,
                                   WorkersConfig)

__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "LossConfig", "OptimizerConfig", "ProbeConfig",
    "WorkersConfig", "RunSettings", "PretrainConfig", "load_config", "parse_overrides", "read_yaml",
]
