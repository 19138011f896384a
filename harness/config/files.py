"""The pretraining configuration, read from a YAML file in experiments/.

    cfg = load_config("experiments/cifar10.yaml", ["optimizer.lr_weights=0.2", "batch_size=512"])

A file may start from another with `base: other.yaml` (path relative to the file); its keys are
merged over the base's, section by section. `--set key=value` overrides use dotted keys and are
coerced to the declared type of the key. Every check runs here, in the driver, before Ray
starts: unknown keys, wrong types, values out of range and impossible combinations raise
ConfigError with the dotted key in the message (the schema and its checks: schema.py).
`check_data=True` also opens the prepared data set (the manifest that `harness prep` writes)
and checks the batch against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.config.schema import CliValue, ConfigError, PretrainConfig, fail

__all__ = ["load_config", "nest", "parse_overrides", "read_yaml"]


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"base: {path} includes itself ({' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        fail("base", f"expected a file name, got {base!r}")
    return _merge(read_yaml(path.parent / base, (*seen, path)), raw)


def nest(values: Mapping[str, Any], where: str = "--set") -> dict:
    """{'optimizer.lr_weights': 0.2, ...} -> {'optimizer': {'lr_weights': 0.2}}; values as given
    (typed from YAML, or CliValue text that the schema parses by the key's declared type)."""
    out: dict = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {key}: {part} is set both as a value and a section")
        node[leaf] = value
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """['optimizer.lr_weights=0.2', ...] -> nested dict of CliValue strings."""
    flat: dict[str, CliValue] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optimizer.lr_weights=0.2")
        flat[key] = CliValue(value)
    return nest(flat)


def _absolute(path: str) -> str:
    # Ray needs an absolute storage path, and workers do not share the driver's cwd.
    if "://" in path:  # a URI (s3://...): harness.storage
        return path
    return str(Path(path).expanduser().resolve())


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                values: Mapping[str, Any] | None = None, name: str | None = None,
                storage_path: str | None = None, check_data: bool = True) -> PretrainConfig:
    """Read a YAML file (following `base:`), apply values and overrides, validate; raises
    ConfigError.

    values: {dotted key: value}, typed as they come (a sweep's `set:` and swept points), merged
    over the file; overrides: `--set` KEY=VALUE text, parsed by each key's declared type, merged
    over both.

    run.name defaults to the file's stem. Relative paths (data.dir, run.storage_path) are taken
    from the current directory and made absolute.
    """
    path = Path(path)
    raw = read_yaml(path)
    raw = _merge({"run": {"name": path.stem}}, raw)
    command_line = {key: value for key, value in (("name", name), ("storage_path", storage_path))
                    if value is not None}
    raw = _merge(raw, nest(values or {}, "value of"))
    raw = _merge(_merge(raw, parse_overrides(overrides)), {"run": command_line})
    cfg = PretrainConfig.from_dict(raw)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dir=_absolute(cfg.data.dir)),
        run=dataclasses.replace(cfg.run, storage_path=_absolute(cfg.run.storage_path)))
    if check_data:
        cfg.check_data()
    return cfg
