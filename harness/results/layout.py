"""The on-disk layout of a sweep: who writes which file, and how a reader finds it again.

RUN_DIR is one sweep's folder (`run.storage_path / name`):

    RUN_DIR/sweep.json                      the sweep: {"name", "config_file", "space",
                                            "metric" (optional), "protocols", "provenance"}
    RUN_DIR/trials/<trial_id>/trial.json    one trial (below)
    RUN_DIR/trials/<trial_id>/pretrain/     its training run: metrics.jsonl, tensorboard/,
                                            launches.jsonl (harness.pretrain.run_log,
                                            harness.pretrain.driver)
    RUN_DIR/baseline/<eval name>.json       an eval RECORD of a randomly initialised backbone
    RUN_DIR/report/                         `harness report` (rewritten whole each time)

A trial record:

    {"trial_id": "t0003",
     "params": {"loss.lambd": 0.0051, "model.projector": "512-512", "seed": 0},
     "status": "ok" | "failed" | "running" | "stopped",
     "error": null | "loss is NaN at epoch 2 (step 17)",
     "train": {"epochs", "steps", "time_s", "images_per_s", "loss", "probe_val_top1"},
     "evals": {RECORD["name"]: RECORD, ...}}

`params` holds only the swept keys (dotted config keys), plus "seed" always. "stopped" means
ended early by the scheduler (ASHA), not an error; a failed trial may lack any `train` key.
`probe_val_top1` is the online probe's last "probe/val_top1" in metrics.jsonl (on val, below).

An eval RECORD:

    {"name": "linear" | "knn" | "semi-1pct" | "transfer-imagenette" | ...,
     "protocol": "linear" | "knn" | "semi" | "transfer", "mode": "fast" | "paper" | null,
     "dataset": "cifar10", "primary": "top1",
     "metrics": {"val/top1": 0.42, "val/top5": 0.91, "test/top1": 0.41, "test/top5": 0.90},
     "init": "pretrained" | "random", ...provenance}

Metric keys are "<split>/<measure>" (knn: "val/k20_top1", ..., "test/k200_top5"); `primary` is
the measure without its split ("top1", "k200_top1"). Two splits, for two uses:

    val     a seeded, class-stratified split carved from train by `harness prep`: every choice
            between trials (the report's best row and best point, ASHA) reads val only
    test    the data set's test split: reported, never used to choose

Metrics are fractions (0.41, not 41). A metric is named in tables as "<eval name>/<split>/
<measure>" ("linear/val/top1", "knn/test/k200_top1"). Every JSON file is written to a temporary
file and moved into place (`os.replace`), so a reader never sees half of one; a trial whose
trial.json is not yet written but whose training has begun is read from its metrics.jsonl as
"running".
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.jsonio import read_json, write_json_atomic  # noqa: F401 (part of this API)
from harness.pretrain.run_log import read_metrics

__all__ = ["STATUSES", "SWEEP_FILE", "TRIAL_FILE", "sweep_file", "trials_dir", "trial_dir",
           "baseline_dir", "report_dir", "pretrain_dir", "write_json_atomic", "read_json",
           "write_sweep", "read_sweep", "write_trial", "read_trials", "write_baseline",
           "read_baselines", "SPLITS", "SELECT_SPLIT", "REPORT_SPLIT", "parse_column",
           "with_split", "metric_columns", "primary_columns", "metric_value",
           "train_from_metrics"]

STATUSES = ("ok", "failed", "running", "stopped")
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"
# Tables list evaluations in the paper's order: linear first, then k-NN, semi-supervised, transfer.
_PROTOCOL_ORDER = ("linear", "knn", "semi", "transfer")
# Selection reads val, reporting shows test: tables put the two side by side, val first.
SELECT_SPLIT, REPORT_SPLIT = "val", "test"
SPLITS = (SELECT_SPLIT, REPORT_SPLIT)


def sweep_file(run_dir: Path | str) -> Path:
    return Path(run_dir) / SWEEP_FILE


def trials_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "trials"


def trial_dir(run_dir: Path | str, trial_id: str) -> Path:
    return trials_dir(run_dir) / trial_id


def pretrain_dir(run_dir: Path | str, trial_id: str) -> Path:
    return trial_dir(run_dir, trial_id) / "pretrain"


def baseline_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "baseline"


def report_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "report"


def write_sweep(run_dir: Path | str, sweep: dict) -> Path:
    return write_json_atomic(sweep_file(run_dir), sweep)


def read_sweep(run_dir: Path | str) -> dict | None:
    """sweep.json, or None where the sweep has not written it."""
    path = sweep_file(run_dir)
    return read_json(path) if path.is_file() else None


def write_trial(run_dir: Path | str, record: dict) -> Path:
    _check_trial(record, "the record")
    return write_json_atomic(trial_dir(run_dir, record["trial_id"]) / TRIAL_FILE, record)


def read_trials(run_dir: Path | str) -> list[dict]:
    """Every trial of the sweep, sorted by trial_id.

    A running trial's `train` is refreshed from its metrics.jsonl (trial.json is written at the
    start and the end, metrics.jsonl every epoch). A folder with neither file (a trial that is
    starting) is left out.
    """
    root = trials_dir(run_dir)
    if not root.is_dir():
        return []
    trials = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        path = folder / TRIAL_FILE
        metrics = read_metrics(folder / "pretrain")
        if path.is_file():
            record = read_json(path)
            _check_trial(record, str(path))
            if record["status"] == "running" and metrics:
                record["train"] = {**record.get("train", {}), **train_from_metrics(metrics)}
        elif metrics:
            record = {"trial_id": folder.name, "params": _launched_params(run_dir, folder),
                      "status": "running", "error": None,
                      "train": train_from_metrics(metrics), "evals": {}}
        else:
            continue
        record.setdefault("params", {})
        record.setdefault("train", {})
        record["evals"] = record.get("evals") or {}
        trials.append(record)
    return sorted(trials, key=lambda t: t["trial_id"])


def _check_trial(record, where: str) -> None:
    if not isinstance(record, dict) or "trial_id" not in record:
        raise ValueError(f"{where}: a trial record needs at least 'trial_id' and 'status'")
    if record.get("status") not in STATUSES:
        raise ValueError(f"{where}: status {record.get('status')!r} is not one of {STATUSES}")


def train_from_metrics(metrics: list[dict]) -> dict:
    """A trial's `train` summary from its per-epoch metrics.jsonl records (oldest first)."""
    last = metrics[-1]
    train = {"epochs": last.get("epoch"), "steps": last.get("step"),
             "time_s": sum(m.get("time/epoch_s", 0.0) + m.get("time/eval_s", 0.0) for m in metrics),
             "images_per_s": last.get("throughput/images_per_s"),
             "loss": last.get("loss/total")}
    probes = [m["probe/val_top1"] for m in metrics if "probe/val_top1" in m]
    if probes:  # the probe may be evaluated every few epochs only: the latest value
        train["probe_val_top1"] = probes[-1]
    return {k: v for k, v in train.items() if v is not None}


def _launched_params(run_dir: Path | str, folder: Path) -> dict:
    """The swept values of a trial with no trial.json yet, from its last launch record."""
    launches = folder / "pretrain" / "launches.jsonl"
    sweep = read_sweep(run_dir) or {}
    if folder.name in (sweep.get("trials") or {}):
        return dict(sweep["trials"][folder.name])  # a group's label is in no config
    if not launches.is_file():
        return {}
    lines = [line for line in launches.read_text().splitlines() if line.strip()]
    try:
        config = json.loads(lines[-1])["config"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return {}
    params = {}
    for key in [*sweep.get("space", {}), "seed"]:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            params[key] = value
    return params


def write_baseline(run_dir: Path | str, record: dict) -> Path:
    return write_json_atomic(baseline_dir(run_dir) / f"{record['name']}.json", record)


def read_baselines(run_dir: Path | str) -> dict[str, dict]:
    """{eval name: RECORD} of the randomly initialised backbone."""
    root = baseline_dir(run_dir)
    if not root.is_dir():
        return {}
    records = (read_json(path) for path in sorted(root.glob("*.json")))
    return {record["name"]: record for record in records}


def parse_column(column: str) -> tuple[str, str | None, str]:
    """"<eval>/<split>/<measure>" -> (eval, split, measure); split is None where the column names
    none of SPLITS (an old-style "<eval>/<measure>")."""
    name, _, rest = column.partition("/")
    split, sep, measure = rest.partition("/")
    if sep and split in SPLITS:
        return name, split, measure
    return name, None, rest


def with_split(column: str, split: str) -> str:
    """The same eval and measure on another split: "knn/test/k200_top1" -> "knn/val/k200_top1"
    (an old-style "knn/k200_top1" gets the split it lacked)."""
    name, _, measure = parse_column(column)
    return f"{name}/{split}/{measure}"


def _eval_records(trials: list[dict], baselines: dict | None) -> dict[str, dict]:
    """One RECORD per eval name (the first seen), for its protocol, primary and metric keys."""
    seen: dict[str, dict] = {}
    for record in [r for t in trials for r in t.get("evals", {}).values()] + \
            list((baselines or {}).values()):
        entry = seen.setdefault(record["name"], {"protocol": record.get("protocol"),
                                                  "primary": record.get("primary"), "keys": set()})
        entry["keys"].update(record.get("metrics", {}))
    order = {p: i for i, p in enumerate(_PROTOCOL_ORDER)}
    return dict(sorted(seen.items(),
                       key=lambda kv: (order.get(kv[1]["protocol"], len(order)), kv[0])))


def metric_columns(trials: list[dict], baselines: dict | None = None) -> list[str]:
    """"<eval>/<split>/<measure>" for every metric of every eval: evals in the paper's protocol
    order (linear, knn, semi, transfer), each eval's primary measure first, and each measure's val
    column just before its test column, so that the two read side by side."""
    columns = []
    for name, entry in _eval_records(trials, baselines).items():
        keys = sorted(entry["keys"], key=lambda k, e=entry: _key_order(k, e["primary"]))
        columns += [f"{name}/{key}" for key in keys]
    return columns


def _key_order(key: str, primary: str | None) -> tuple:
    """A metric key's place: the primary measure first, then by measure, val before test."""
    _, split, measure = parse_column(f"eval/{key}")
    return measure != primary, measure, SPLITS.index(split) if split else len(SPLITS)


def primary_columns(trials: list[dict], baselines: dict | None = None, *,
                    split: str) -> list[str]:
    """"<eval>/<split>/<primary measure>" of every eval, in metric_columns' order: split "val"
    for choosing, "test" for reporting."""
    return [f"{name}/{split}/{entry['primary']}"
            for name, entry in _eval_records(trials, baselines).items() if entry["primary"]]


def metric_value(evals: dict, column: str) -> float | None:
    """The value of "<eval>/<split>/<measure>" in an {eval name: RECORD} dict, or None."""
    name, _, key = column.partition("/")
    return evals.get(name, {}).get("metrics", {}).get(key)
