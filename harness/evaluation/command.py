"""`harness eval CHECKPOINT --protocol P... --data DIR`: records written as JSON, a table printed.

Records go to OUT/<name>.json (the checkpoint) and OUT/baseline/<name>.json (a random backbone
of the same architecture, unless --no-baseline); OUT defaults to `eval/` beside the checkpoint's
run. Written atomically, after the protocol finished: a record on disk is always complete.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from harness import storage
from harness.checkpoint import STATE_FILE
from harness.config.schema import CliValue, ConfigError
from harness.evaluation.backbone import load_backbone
from harness.evaluation.runner import evaluate
from harness.evaluation.settings import EvalSettings, parse_protocols
from harness.jsonio import write_json_atomic

__all__ = ["eval_command", "print_record", "settings_from", "write_records", "default_out"]


def settings_from(config: str | None, overrides: list[str], **values) -> EvalSettings:
    raw: dict = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"evaluation config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of evaluation settings")
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("eval.")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. linear_mode=paper")
        raw[key] = CliValue(value)
    raw.update({k: v for k, v in values.items() if v is not None})
    return EvalSettings.from_dict(raw)


def default_out(checkpoint: Path) -> Path:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if folder.name.startswith("checkpoint_epoch") or folder.name == "export":
        folder = folder.parent
    return folder / "eval"


def _remote_out(uri: str) -> str:
    """default_out of a URI: eval/ in the run the checkpoint belongs to."""
    base, sep, query = uri.partition("?")
    parts = base.rstrip("/").split("/")
    if parts[-1] == STATE_FILE:
        parts.pop()
    if parts[-1].startswith("checkpoint_epoch") or parts[-1] == "export":
        parts.pop()
    return storage.join("/".join(parts) + sep + query, "eval")


def write_records(records: list[dict], out: Path) -> list[Path]:
    paths = []
    for record in records:
        folder = out if record["init"] == "pretrained" else out / "baseline"
        paths.append(write_json_atomic(folder / f"{record['name']}.json", record))
    return paths


def print_record(record: dict) -> None:
    metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in record["metrics"].items())
    print(f"{record['init']:>10}  {record['name']:<22} {record['dataset']:<16} {metrics}  "
          f"({record['wall_time_s']:.0f} s)", flush=True)


def eval_command(args: argparse.Namespace) -> int:
    settings = settings_from(args.config, args.set, resolution=args.resolution)
    protocols = parse_protocols(args.protocol)
    remote = storage.is_uri(args.checkpoint)
    checkpoint = args.checkpoint if remote else Path(args.checkpoint)
    backbone = load_backbone(checkpoint, expect_arch=args.arch)
    # A run at a URI gets its records there (eval/ beside its checkpoints), unless --out.
    mirror = _remote_out(args.checkpoint) if remote and not args.out else None
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="harness-eval-"))
                                           if mirror else default_out(checkpoint))
    print(f"harness eval: {backbone.arch} (epoch {backbone.epoch}) from {backbone.source}: "
          f"{', '.join(protocols)}" + ("" if args.no_baseline else ", and a random-init baseline"))
    start = time.perf_counter()
    records = evaluate(backbone, protocols, args.data, transfer_dirs=args.transfer,
                       settings=settings, with_baseline=not args.no_baseline,
                       log=print_record)
    write_records(records, out)
    if mirror:
        storage.upload(out, mirror)
        shutil.rmtree(out, ignore_errors=True)
    print(f"harness eval: {len(records)} records in {mirror or out} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0
