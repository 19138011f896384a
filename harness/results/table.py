"""A sweep's results as tables: one row per trial, mean ± std per point, rendered three ways.

`Table` holds formatted cells; `to_markdown` and `to_text` render it (results.md, stdout) and
`csv_rows` gives the same trials unformatted (results.csv). Accuracies are shown in percent with
one decimal, as in the paper; the CSV keeps the recorded fractions.

Columns are "<eval>/<split>/<measure>" (harness.results.layout), each measure's val column
beside its test column. The best trial and the best point (★) are the argmax of a val column only:
best_trial and point_table refuse a test one, so the test numbers are shown, never chosen on.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from harness.results.layout import SELECT_SPLIT, metric_value, parse_column, with_split

__all__ = ["Table", "param_keys", "check_selection_metric", "best_trial", "trial_table",
           "point_table", "csv_rows", "to_markdown", "to_text", "format_param", "format_metric",
           "BEST"]

BEST = "★"
MISSING = "-"
# (column label, train key, format): what training recorded, after the evaluations.
_TRAIN_COLUMNS = (("epochs", "epochs", "{:.0f}"), ("train s", "time_s", "{:.0f}"),
                  ("images/s", "images_per_s", "{:.1f}"),
                  ("probe val top-1", "probe_val_top1", "pct"))


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    # Columns whose cells are numbers: right-aligned in both renderings.
    numeric: set[str] = field(default_factory=set)


def param_keys(trials: list[dict], sweep: dict | None) -> list[str]:
    """The swept keys: sweep.json's space order, then any others the trials record, seed last."""
    keys = [k for k in (sweep or {}).get("space", {}) if k != "seed"]
    seen = sorted({k for t in trials for k in t["params"]} - set(keys) - {"seed"})
    has_seed = any("seed" in t["params"] for t in trials)
    return keys + seen + (["seed"] if has_seed else [])


def check_selection_metric(metric: str, where: str = "metric") -> str:
    """`metric` if it is a val column; a ValueError naming `where` and the val spelling if not."""
    if parse_column(metric)[1] != SELECT_SPLIT:
        raise ValueError(f"{where} {metric}: the best row is chosen on the validation split only "
                         "(test is reported, never used to choose); use "
                         f"{with_split(metric, SELECT_SPLIT)}")
    return metric


def best_trial(trials: list[dict], metric: str) -> str | None:
    """The trial_id with the highest val `metric` (the first such on a tie), or None."""
    check_selection_metric(metric)
    best, best_value = None, None
    for t in trials:
        value = metric_value(t["evals"], metric)
        if value is not None and (best_value is None or value > best_value):
            best, best_value = t["trial_id"], value
    return best


def format_param(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return MISSING if value is None else str(value)


def format_metric(column: str, value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{100 * value:.1f}" if "top" in column else f"{value:.4g}"


def _format_train(fmt: str, value) -> str:
    if value is None:
        return MISSING
    return f"{100 * value:.1f}" if fmt == "pct" else fmt.format(value)


def _status(trial: dict) -> str:
    status, epochs = trial["status"], trial["train"].get("epochs")
    if status == "failed":
        return f"failed: {trial.get('error') or 'no reason recorded'}"
    if status in ("running", "stopped") and epochs is not None:
        return f"{status} (epoch {epochs})"
    return status


def trial_table(trials: list[dict], baselines: dict, keys: list[str], metrics: list[str],
                best: str | None) -> Table:
    """One row per trial, then the random-init baseline row."""
    train_labels = [label for label, _, _ in _TRAIN_COLUMNS]
    table = Table(["trial", "status", *keys, *metrics, *train_labels],
                  numeric={*metrics, *train_labels})
    for t in trials:
        mark = f" {BEST}" if t["trial_id"] == best else ""
        table.rows.append([
            t["trial_id"] + mark, _status(t),
            *(format_param(t["params"].get(k)) for k in keys),
            *(format_metric(m, metric_value(t["evals"], m)) for m in metrics),
            *(_format_train(fmt, t["train"].get(key)) for _, key, fmt in _TRAIN_COLUMNS)])
    if baselines:
        table.rows.append(["random init", "baseline", *(MISSING for _ in keys),
                           *(format_metric(m, metric_value(baselines, m)) for m in metrics),
                           *(MISSING for _ in _TRAIN_COLUMNS)])
    return table


def _points(trials: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """Finished trials grouped by their params without the seed, in trial order."""
    groups: dict[tuple, list[dict]] = {}
    for t in trials:
        if t["status"] == "ok":
            point = tuple(format_param(t["params"].get(k)) for k in keys if k != "seed")
            groups.setdefault(point, []).append(t)
    return groups


def _mean_std(values: list[float], scale: float, fmt: str) -> str:
    if not values:
        return MISSING
    mean = fmt.format(scale * statistics.fmean(values))
    # Sample std (n - 1): two seeds are two draws, not the whole population.
    return mean if len(values) < 2 else f"{mean} ± {fmt.format(scale * statistics.stdev(values))}"


def point_table(trials: list[dict], keys: list[str], metrics: list[str],
                best_metric: str | None) -> Table | None:
    """Mean ± std over seeds, one row per point, the best by the mean of the val column
    `best_metric` marked; None where no point has two finished runs."""
    if best_metric:
        check_selection_metric(best_metric)
    groups = _points(trials, keys)
    if not any(len(g) > 1 for g in groups.values()):
        return None
    point_keys = [k for k in keys if k != "seed"]
    train = [(label, key, fmt) for label, key, fmt in _TRAIN_COLUMNS if key != "epochs"]
    table = Table(["trials", *point_keys, "seeds", *metrics, *(label for label, _, _ in train)],
                  numeric={"seeds", *metrics, *(label for label, _, _ in train)})

    def values(group, get):
        return [v for t in group if (v := get(t)) is not None]

    means = {point: statistics.fmean(vs) for point, g in groups.items()
             if best_metric and (vs := values(g, lambda t: metric_value(t["evals"], best_metric)))}
    best = max(means, key=means.get) if means else None
    for point, group in groups.items():
        mark = f" {BEST}" if point == best else ""
        cells = [", ".join(t["trial_id"] for t in group) + mark, *point, str(len(group))]
        for m in metrics:
            scale, fmt = (100, "{:.1f}") if "top" in m else (1, "{:.4g}")
            cells.append(_mean_std(values(group, lambda t: metric_value(t["evals"], m)), scale, fmt))
        for _, key, fmt in train:
            scale, fmt = (100, "{:.1f}") if fmt == "pct" else (1, fmt)
            cells.append(_mean_std(values(group, lambda t: t["train"].get(key)), scale, fmt))
        table.rows.append(cells)
    return table


def csv_rows(trials: list[dict], baselines: dict, keys: list[str], metrics: list[str],
             best: str | None) -> list[dict]:
    """The trial table unformatted: recorded values, fractions as fractions."""
    train_keys = ("epochs", "steps", "time_s", "images_per_s", "loss", "probe_val_top1")
    rows = [{"trial_id": t["trial_id"], "status": t["status"], "error": t.get("error") or "",
             **{k: t["params"].get(k, "") for k in keys},
             **{m: _blank(metric_value(t["evals"], m)) for m in metrics},
             **{k: _blank(t["train"].get(k)) for k in train_keys},
             "best": int(t["trial_id"] == best)} for t in trials]
    if baselines:
        rows.append({"trial_id": "random-init", "status": "baseline", "error": "",
                     **{k: "" for k in keys},
                     **{m: _blank(metric_value(baselines, m)) for m in metrics},
                     **{k: "" for k in train_keys}, "best": 0})
    return rows


def _blank(value):
    return "" if value is None else value


def to_markdown(table: Table) -> str:
    def row(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if c in table.numeric else "---" for c in table.columns]
    return "\n".join([row(table.columns), "|" + "|".join(rule) + "|",
                      *(row(r) for r in table.rows)]) + "\n"


def to_text(table: Table) -> str:
    widths = [max(len(c), *(len(r[i]) for r in table.rows)) for i, c in enumerate(table.columns)]

    def row(cells):
        return "  ".join(c.rjust(w) if col in table.numeric else c.ljust(w)
                         for c, w, col in zip(cells, widths, table.columns)).rstrip()

    return "\n".join([row(table.columns), "  ".join("-" * w for w in widths),
                      *(row(r) for r in table.rows)]) + "\n"
