"""`harness report RUN_DIR`: a sweep's tables, ablation figures and TensorBoard, from disk alone.

    <report>/results.md        the trial table, mean ± std over seeds, links to the figures,
                               and, for a sweep file with `reference:`, the paper's numbers
                               beside ours and a verdict per claim (harness.results.ablation)
    <report>/results.csv       one row per trial (and the random-init baseline), raw values
    <report>/*.png             accuracy against lambda / batch size / projector width, and
                               ablation_<axis>.png: ours and the paper's, each vs its baseline
    <report>/tensorboard/      HParams sessions and the figures (harness.results.tensorboard)

Every evaluation is shown on two splits (harness.results.layout): val, which picks the best
trial and the best point (the sweep's `metric`, --metric, or else the first evaluation's primary
measure on val; a test column is refused), and test, shown beside it and plotted, never chosen
on.

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

from harness.results.layout import (REPORT_SPLIT, SELECT_SPLIT, STATUSES, metric_columns,
                                    metric_value, parse_column, primary_columns, read_baselines,
                                    read_sweep, read_trials, report_dir, trials_dir, with_split)
from harness.results.ablation import Curve, markdown_section, measured_curve, overlay_figure, \
    verdicts
from harness.results.figures import ablation_figures
from harness.results.table import (BEST, Table, best_trial, check_selection_metric, csv_rows,
                                   format_metric, param_keys, point_table, to_markdown, to_text,
                                   trial_table)
from harness.results.tensorboard import write_tensorboard

__all__ = ["Report", "load_report", "write_report", "report_command"]

_NOTE = ("Accuracies in %. `<evaluation>/val/<measure>`: on the validation split, carved from "
         "the training images by `harness prep`; `<evaluation>/test/<measure>`: on the data "
         "set's test split. `train s`: training time in seconds; `images/s`: training "
         "throughput; `probe val top-1`: the online linear probe on the validation split at the "
         "last epoch; `random init`: the same evaluations of an untrained backbone.")


@dataclass
class Report:
    name: str
    summary: str
    selection: str                   # which val column chose the best row, in words
    trials: list[dict]
    baselines: dict
    keys: list[str]
    metrics: list[str]
    metric: str | None               # the val column that picks the best trial and point
    primaries: list[str]             # each eval's primary measure on test: what the figures plot
    best: str | None
    by_trial: Table
    by_point: Table | None
    reference: dict | None = None    # the sweep file's `reference:` (the paper's result)
    curve: Curve | None = None       # the measured curve on its axis


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
    metric = _selection_metric(metric, sweep, trials, baselines, metrics)
    keys = param_keys(trials, sweep)
    best = best_trial(trials, metric) if metric else None
    name = (sweep or {}).get("name") or run_dir.name
    summary = _summary(sweep, trials, baselines, metric, best)
    primaries = primary_columns(trials, baselines, split=REPORT_SPLIT)
    reference = (sweep or {}).get("reference")
    curve = None
    if reference and primaries:
        curve = measured_curve(trials, reference, primaries[0],
                               list(sweep.get("space", {}).get(reference["axis"], [])))
    return Report(name=name, summary=summary, selection=_selection(metric), trials=trials,
                  baselines=baselines, keys=keys, metrics=metrics, metric=metric,
                  primaries=primaries, best=best,
                  by_trial=trial_table(trials, baselines, keys, metrics, best),
                  by_point=point_table(trials, keys, metrics, metric),
                  reference=reference, curve=curve)


def _selection_metric(option: str | None, sweep: dict | None, trials: list[dict],
                      baselines: dict, metrics: list[str]) -> str | None:
    """The val column that picks the best row: --metric, else sweep.json's `metric`, else the
    first eval's primary measure on val. Never a test column, wherever it comes from."""
    if option is not None:
        check_selection_metric(option, "--metric")
        if option not in metrics:
            choices = [m for m in metrics if parse_column(m)[1] == SELECT_SPLIT]
            raise ValueError(f"--metric {option}: no trial or baseline has it; "
                             f"choose one of: {', '.join(choices) or 'none yet'}")
        return option
    if (sweep or {}).get("metric"):
        # A sweep.json written before metrics named their split: say how to report it anyway.
        try:
            return check_selection_metric(sweep["metric"], "sweep.json's metric")
        except ValueError as err:
            raise ValueError(f"{err} (give it as --metric)") from None
    return next(iter(primary_columns(trials, baselines, split=SELECT_SPLIT)), None)


def _selection(metric: str | None) -> str:
    if metric is None:
        return ""
    return (f"Selection: the best trial and the best point ({BEST}) are those with the highest "
            f"`{metric}`, a measure on the validation split. The test columns (such as "
            f"`{with_split(metric, REPORT_SPLIT)}`) are reported only: they were never used to "
            "choose anything.")


def _val_and_test(evals: dict, metric: str) -> str:
    """"val 42.3, test 41.9": a val column's value and the same measure's on test."""
    test = with_split(metric, REPORT_SPLIT)
    return (f"val {format_metric(metric, metric_value(evals, metric))}, "
            f"test {format_metric(test, metric_value(evals, test))}")


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
        evals = next(t for t in trials if t["trial_id"] == best)["evals"]
        against = "" if metric_value(baselines, metric) is None else \
            f" (random init: {_val_and_test(baselines, metric)})"
        outcome = f"Best by `{metric}`: {best} {BEST}, {_val_and_test(evals, metric)}{against}."
    noun = "trial" if len(trials) == 1 else "trials"
    return f"{config}{len(trials)} {noun}: {statuses}. {outcome}"


def markdown(report: Report, figures: list[str], overlay: str | None = None) -> str:
    parts = [f"# Sweep `{report.name}`\n", report.summary + "\n",
             *([report.selection + "\n"] if report.selection else []), _NOTE + "\n",
             "## Trials\n", to_markdown(report.by_trial)]
    if report.by_point is not None:
        parts += ["## Mean ± std over seeds\n",
                  "Finished trials grouped by their parameters; std is the sample std (n - 1).\n",
                  to_markdown(report.by_point)]
    if report.curve is not None:
        parts.append(markdown_section(report.reference, report.curve, overlay))
    if figures:
        parts += ["## Figures\n", *(f"![{Path(f).stem}]({f})\n" for f in figures)]
    return "\n".join(parts)


def text(report: Report) -> str:
    parts = [f"sweep {report.name}: {report.summary}", *filter(None, [report.selection]), "",
             to_text(report.by_trial)]
    if report.by_point is not None:
        parts += ["mean ± std over seeds:", "", to_text(report.by_point)]
    if report.curve is not None:
        parts += [f"against the paper ({report.reference['source']}):",
                  *(f"  {v.replace('**', '')}" for v in verdicts(report.reference, report.curve))]
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
        overlay = (overlay_figure(report.reference, report.curve, build)
                   if report.curve is not None else None)
        (build / "results.md").write_text(markdown(report, [f.name for f in figures],
                                                   overlay.name if overlay else None))
        figures += [overlay] if overlay else []
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
    from harness import storage

    uri = args.run_dir if storage.is_uri(args.run_dir) else None
    if uri:
        # The sweep's records (not its checkpoints) into this machine's copy; the report is
        # written there and, unless --out, into the URI beside them.
        run_dir = storage.local_root() / storage.basename(uri)  # where `harness sweep` works
        if not storage.download_records(uri, run_dir):
            raise FileNotFoundError(f"{uri}: nothing there (give the URI `harness sweep "
                                    "--storage` wrote to, with the sweep's name at its end)")
    else:
        run_dir = Path(args.run_dir)
    report = load_report(run_dir, args.metric)
    if not report.trials:
        print(f"harness report: sweep '{report.name}' ({run_dir}) has no trials yet: nothing to "
              "report; run it again once a trial has started", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else report_dir(run_dir)
    figures = write_report(report, out)
    print(text(report))
    if uri and not args.out:
        storage.upload(run_dir, uri, "report")
        print(f"report mirrored to {storage.join(uri, 'report')}")
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {len(figures)} figures, "
          f"and {out / 'tensorboard'}")
    print(f"view: tensorboard --logdir {run_dir} --host 127.0.0.1")
    return 0
