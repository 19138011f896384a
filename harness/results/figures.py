"""The paper's ablation figures from a sweep: accuracy against lambda, batch size, projector width.

One figure per swept parameter that takes more than one value among the finished trials, on a
log axis; one line per evaluation (its primary measure on the test split, "linear/test/top1":
the reported number, the one the paper plots; the val split only chooses the best row) and per
setting of the other swept keys (a lambda x width grid: one lambda line per width), each point
the mean over seeds with their std as error bars (a spread over seeds only, never over other
settings); the random-init baseline of the same column as a dashed line of the same colour.
Keys that change with the axis alone (a group's batch size and its learning rate) are not
other settings.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# A bare Figure renders with Agg and leaves pyplot's global state (and backend) alone.
from matplotlib.figure import Figure

from harness.results.layout import metric_value, parse_column

__all__ = ["AXES", "Axis", "ablation_figures", "save_figure"]


def projector_width(spec: str) -> int:
    """The output width of a projector spec "a-b-c": the paper's x axis in its width ablation."""
    return int(str(spec).split("-")[-1])


@dataclass(frozen=True)
class Axis:
    key: str              # the swept config key
    file: str             # figure file stem
    label: str
    log_base: int
    value: Callable = float


AXES = (Axis("loss.lambd", "accuracy_vs_lambda", "λ (off-diagonal weight)", 10),
        Axis("batch_size", "accuracy_vs_batch_size", "batch size", 2, int),
        Axis("model.projector", "accuracy_vs_projector_width", "projector output width", 2,
             projector_width))


def ablation_figures(trials: list[dict], baselines: dict, primaries: list[str],
                     out_dir: Path) -> list[Path]:
    """Write one PNG per varying axis into out_dir, a line per column of `primaries` (the
    report gives each eval's primary measure on test); returns their paths."""
    finished = [t for t in trials if t["status"] == "ok" and t["evals"]]
    paths = []
    for axis in AXES:
        xs = {axis.value(t["params"][axis.key]) for t in finished if axis.key in t["params"]}
        if len(xs) > 1:
            paths.append(_figure(axis, finished, baselines, primaries, out_dir))
    return paths


def _series(trials: list[dict], axis: Axis) -> dict[str, list[dict]]:
    """The trials by their setting of the other swept keys (seed aside), "" when there is one;
    a key that takes one value at every x moves with the axis and sets no series."""
    by_x: dict = {}
    for t in trials:
        by_x.setdefault(axis.value(t["params"][axis.key]), []).append(t)
    keys = sorted({k for t in trials for k in t["params"]} - {axis.key, "seed"})
    free = [k for k in keys
            if any(len({str(t["params"].get(k)) for t in ts}) > 1 for ts in by_x.values())]
    series: dict[str, list[dict]] = {}
    for t in trials:
        label = ", ".join(f"{k}={t['params'].get(k)}" for k in free)
        series.setdefault(label, []).append(t)
    return series


def _figure(axis: Axis, trials: list[dict], baselines: dict, primaries: list[str],
            out_dir: Path) -> Path:
    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.subplots()
    all_x = set()
    swept = [t for t in trials if axis.key in t["params"]]
    series = _series(swept, axis)
    line = 0
    for column in primaries:
        baseline = metric_value(baselines, column)
        baseline_drawn = False
        for label, members in series.items():
            by_x: dict = {}
            for t in members:
                value = metric_value(t["evals"], column)
                if value is not None:
                    by_x.setdefault(axis.value(t["params"][axis.key]), []).append(100 * value)
            if not by_x:
                continue
            x = sorted(by_x)
            all_x.update(x)
            means = [statistics.fmean(by_x[v]) for v in x]
            stds = [statistics.stdev(by_x[v]) if len(by_x[v]) > 1 else 0.0 for v in x]
            colour = f"C{line % 10}"
            line += 1
            ax.errorbar(x, means, yerr=stds, color=colour, marker="o", capsize=3,
                        label=f"{column}, {label}" if label else column)
            if baseline is not None and not baseline_drawn:  # once per column
                ax.axhline(100 * baseline, color=colour, linestyle="--", linewidth=1,
                           label=f"{column}, random init")
                baseline_drawn = True
    ax.set_xscale("log", base=axis.log_base)
    ticks = sorted(all_x)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel(axis.label)
    # The split plotted, said on the figure: test, the reported numbers (never chosen on).
    split = "/".join(sorted({parse_column(c)[1] or "unsplit" for c in primaries}))
    ax.set_ylabel(f"{split} top-1 (%), primary measure")
    ax.set_title(f"{split.capitalize()} accuracy vs {axis.label.split(' (')[0]} "
                 "(mean ± std over seeds)")
    return save_figure(fig, ax, out_dir / f"{axis.file}.png")


def save_figure(fig: Figure, ax, path: Path) -> Path:
    """The report's figures' common finish: a light grid, a small legend, a tight PNG."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path
