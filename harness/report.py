"""`harness report RUN_DIR`: a sweep's tables, ablation figures and TensorBoard, from disk alone.

    <report>/results.md        the trial table, mean ± std over seeds, links to the figures
    <report>/results.csv       one row per trial (and the random-init baseline), raw values
    <report>/*.png             accuracy against lambda / batch size / projector width
    <report>/tensorboard/      HParams sessions and the figures (harness.results_tensorboard)

<report> is RUN_DIR/report unless --out says otherwise. It is built in a sibling folder and
swapped in whole, so a reader (TensorBoard included) sees the old report or the new one, never a
mix. It reads only what the sweep has written, so it runs as well while the sweep is running.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.results import (STATUSES, metric_columns, metric_value, primary_columns,
                             read_baselines, read_sweep, read_trials, report_dir, trials_dir)
from harness.results_figures import ablation_figures
from harness.results_table import (BEST, Table, best_trial, csv_rows, format_metric, param_keys,
                                   point_table, to_markdown, to_text, trial_table)
from harness.results_tensorboard import write_tensorboard

__all__ = ["Report", "load_report", "write_report", "report_command"]

_NOTE = ("Accuracies in %. `train s`: training time in seconds; `images/s`: training throughput; "
         "`probe top-1`: the online linear probe at the last epoch; `random init`: the same "
         "evaluations of an untrained backbone.")


@dataclass
class Report:
    name: str
    summary: str
    trials: list[dict]
    baselines: dict
    keys: list[str]
    metrics: list[str]
    primaries: list[str]
    best: str | None
    by_trial: Table
    by_point: Table | None


def load_report(run_dir: Path, metric: str | None = None) -> Report:
    """Everything the report shows, read from run_dir. Raises on a folder that is not a sweep."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such folder")
    sweep = read_sweep(run_dir)
    if sweep is None and not trials_dir(run_dir).is_dir():
        raise ValueError(f"{run_dir} is not a sweep folder: it has neither sweep.json nor trials/ "
                         "(give the folder `harness sweep` writes, <storage_path>/<name>)")
    trials = read_trials(run_dir)
    baselines = read_baselines(run_dir)
    metrics = metric_columns(trials, baselines)
    primaries = primary_columns(trials, baselines)
    if metric is not None and metric not in metrics:
        raise ValueError(f"--metric {metric}: no trial or baseline has it; "
                         f"choose one of: {', '.join(metrics) or 'none yet'}")
    metric = metric or (sweep or {}).get("metric") or next(iter(primaries), None)
    keys = param_keys(trials, sweep)
    best = best_trial(trials, metric) if metric else None
    name = (sweep or {}).get("name") or run_dir.name
    summary = _summary(sweep, trials, baselines, metric, best)
    return Report(name=name, summary=summary, trials=trials,
                  baselines=baselines, keys=keys, metrics=metrics, primaries=primaries, best=best,
                  by_trial=trial_table(trials, baselines, keys, metrics, best),
                  by_point=point_table(trials, keys, metrics, metric))


def _summary(sweep: dict | None, trials: list[dict], baselines: dict, metric: str | None,
             best: str | None) -> str:
    counts = Counter(t["status"] for t in trials)
    statuses = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    config = f"Config `{sweep['config_file']}`. " if sweep and sweep.get("config_file") else ""
    if metric is None:
        outcome = "No evaluation results yet."
    elif best is None:
        outcome = f"No trial has `{metric}` yet."
    else:
        value = metric_value(next(t for t in trials if t["trial_id"] == best)["evals"], metric)
        baseline = metric_value(baselines, metric)
        against = "" if baseline is None else f" (random init: {format_metric(metric, baseline)})"
        outcome = f"Best by `{metric}`: {best} {BEST}, {format_metric(metric, value)}{against}."
    noun = "trial" if len(trials) == 1 else "trials"
    return f"{config}{len(trials)} {noun}: {statuses}. {outcome}"


def markdown(report: Report, figures: list[str]) -> str:
    parts = [f"# Sweep `{report.name}`\n", report.summary + "\n", _NOTE + "\n",
             "## Trials\n", to_markdown(report.by_trial)]
    if report.by_point is not None:
        parts += ["## Mean ± std over seeds\n",
                  "Finished trials grouped by their parameters; std is the sample std (n - 1).\n",
                  to_markdown(report.by_point)]
    if figures:
        parts += ["## Figures\n", *(f"![{Path(f).stem}]({f})\n" for f in figures)]
    return "\n".join(parts)


def text(report: Report) -> str:
    parts = [f"sweep {report.name}: {report.summary}", "", to_text(report.by_trial)]
    if report.by_point is not None:
        parts += ["mean ± std over seeds:", "", to_text(report.by_point)]
    return "\n".join(parts)


def write_report(report: Report, out: Path) -> list[Path]:
    """Build the report folder next to `out`, then swap it in; returns the figure paths."""
    if out.exists() and not _is_report(out):
        raise ValueError(f"{out} exists and is not a report folder (no results.md): "
                         "give --out a new folder or an earlier report's")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        build.chmod(0o755)
        figures = ablation_figures(report.trials, report.baselines, report.primaries, build)
        (build / "results.md").write_text(markdown(report, [f.name for f in figures]))
        _write_csv(build / "results.csv", report)
        write_tensorboard(build / "tensorboard", report.trials, report.keys, report.metrics,
                          figures)
        old = build.with_name(build.name.replace(".new-", ".old-"))
        if out.exists():
            os.replace(out, old)
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return [out / f.name for f in figures]


def _is_report(folder: Path) -> bool:
    return (folder / "results.md").is_file() or (folder.is_dir() and not any(folder.iterdir()))


def _write_csv(path: Path, report: Report) -> None:
    rows = csv_rows(report.trials, report.baselines, report.keys, report.metrics, report.best)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report_command(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    report = load_report(run_dir, args.metric)
    if not report.trials:
        print(f"harness report: sweep '{report.name}' ({run_dir}) has no trials yet: nothing to "
              "report; run it again once a trial has started", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else report_dir(run_dir)
    figures = write_report(report, out)
    print(text(report))
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {len(figures)} figures, "
          f"and {out / 'tensorboard'}")
    print(f"view: tensorboard --logdir {run_dir} --host 127.0.0.1")
    return 0
