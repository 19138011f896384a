"""A sweep against the paper: its `reference:` (harness.sweep.config) drawn and judged.

The measured curve is the report's first primary column on test (`linear/test/top1` when the
linear probe ran: the reported number, as the paper's), the mean over seeds at each point of
the axis with their std as error bars. The scales differ (CIFAR-10 and ImageNet, 300 epochs
of different data), so both curves are drawn as accuracy relative to their own baseline point:
ours `reference.ours`, the paper's `reference.baseline`. Each claim gets a verdict in words
with the numbers it rests on:

    {flat: P}               the measured means span at most P points
    {rising: P}             along the axis, no point more than P under the one before, and the
                            last above the first
    {point: L, below: P}    L at least P points under our baseline
    {point: L, within: P}   L within P points of our baseline
    {point: L, chance: P}   L within P points of chance (100 / classes)

Verdicts are reporting: nothing is chosen on them, so they read test, as the paper's numbers do.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from harness.results.layout import metric_value, parse_column
from harness.results.figures import save_figure

__all__ = ["Curve", "markdown_section", "measured_curve", "overlay_figure", "verdicts"]


def _x(point: str) -> float | None:
    """A point's place on a numeric axis (a projector spec by its output width), or None."""
    try:
        return float(point.split("-")[-1])
    except ValueError:
        return None


@dataclass(frozen=True)
class Curve:
    column: str
    points: tuple[str, ...]              # the axis's points in order (numeric, or the file's)
    values: dict[str, list[float]]       # point -> the column in % for each finished seed
    classes: int | None                  # of the evaluated data set, for chance

    def mean(self, point: str) -> float | None:
        values = self.values.get(point)
        return statistics.fmean(values) if values else None

    def std(self, point: str) -> float:
        values = self.values.get(point) or []
        return statistics.stdev(values) if len(values) > 1 else 0.0


def measured_curve(trials: list[dict], reference: dict, column: str,
                   order: list[str]) -> Curve:
    """`column` over the reference's axis from the finished trials; `order`: the sweep's points
    (a group's labels in its file's order), kept for a categorical axis."""
    from harness.sweep.config import point_key

    axis, values, classes = reference["axis"], {}, None
    for t in trials:
        value = metric_value(t.get("evals", {}), column) if t["status"] == "ok" else None
        if value is None or axis not in t["params"]:
            continue
        values.setdefault(point_key(t["params"][axis]), []).append(100 * value)
        record = t["evals"][parse_column(column)[0]]
        classes = classes or (record.get("data") or {}).get("classes")
    points = [point_key(p) for p in order] or sorted(values)
    if all(_x(p) is not None for p in points):
        points = sorted(points, key=_x)
    return Curve(column, tuple(points), values, classes)


def _points(p: float) -> str:
    return f"{p:g} point" if p == 1 else f"{p:g} points"


def _judge(claim: dict, curve: Curve, ours: str) -> str:
    base = curve.mean(ours)
    measured = [(p, curve.mean(p)) for p in curve.points if curve.mean(p) is not None]
    if "flat" in claim:
        if len(measured) < 2:
            return f"flat within {_points(claim['flat'])}: not judged, fewer than two points measured"
        low, high = min(measured, key=lambda pm: pm[1]), max(measured, key=lambda pm: pm[1])
        spread = high[1] - low[1]
        verdict = "holds" if spread <= claim["flat"] else "does not hold"
        return (f"flat within {_points(claim['flat'])}: **{verdict}**: the {len(measured)} "
                f"points span {spread:.1f} ({low[1]:.1f} at {low[0]} to {high[1]:.1f} at "
                f"{high[0]})")
    if "rising" in claim:
        if len(measured) < 2:
            return "rising: not judged, fewer than two points measured"
        drops = [(a[0], b[0], a[1] - b[1]) for a, b in itertools.pairwise(measured)]
        worst = max(drops, key=lambda d: d[2])
        ok = worst[2] <= claim["rising"] and measured[-1][1] > measured[0][1]
        return (f"rising (no drop over {_points(claim['rising'])}): "
                f"**{'holds' if ok else 'does not hold'}**: {measured[0][1]:.1f} at "
                f"{measured[0][0]} to {measured[-1][1]:.1f} at {measured[-1][0]}, largest drop "
                f"{max(worst[2], 0.0):.1f} ({worst[0]} to {worst[1]})")
    point = str(claim["point"])
    value = curve.mean(point)
    if value is None:
        return f"{point}: not judged, no finished trial"
    if "chance" in claim:
        if not curve.classes:
            return f"{point} at chance: not judged, the records do not give the class count"
        chance = 100 / curve.classes
        ok = value <= chance + claim["chance"]
        return (f"{point} at chance (within {_points(claim['chance'])} of {chance:.1f}): "
                f"**{'holds' if ok else 'does not hold'}**: {value:.1f}")
    if base is None:
        return f"{point}: not judged, no finished trial at the baseline {ours}"
    delta = value - base
    if "below" in claim:
        ok = delta <= -claim["below"]
        return (f"{point} at least {_points(claim['below'])} under {ours}: "
                f"**{'holds' if ok else 'does not hold'}**: {value:.1f} against {base:.1f} "
                f"({delta:+.1f})")
    ok = abs(delta) <= claim["within"]
    return (f"{point} within {_points(claim['within'])} of {ours}: "
            f"**{'holds' if ok else 'does not hold'}**: {value:.1f} against {base:.1f} "
            f"({delta:+.1f})")


def verdicts(reference: dict, curve: Curve) -> list[str]:
    return [_judge(claim, curve, reference["ours"]) for claim in reference["claims"]]


def _relative(reference: dict, curve: Curve) -> tuple[dict, dict]:
    base = curve.mean(reference["ours"])
    ours = {p: curve.mean(p) - base for p in curve.points
            if base is not None and curve.mean(p) is not None}
    paper = reference.get("values") or {}
    paper = {p: v - paper[reference["baseline"]] for p, v in paper.items()} if paper else {}
    return ours, paper


def markdown_section(reference: dict, curve: Curve, figure: str | None) -> str:
    ours, paper = _relative(reference, curve)
    published = reference.get("values") or {}
    lines = [f"## Against the paper: {reference['axis']}\n",
             f"Source: {reference['source']}; its measure: {reference['measure']}. Ours: "
             f"`{curve.column}`, mean ± std over seeds. Each curve is relative to its own "
             f"baseline point (ours {reference['ours']}"
             + (f", the paper's {reference['baseline']}" if published else "") + ").\n",
             f"| {reference['axis']} | ours | ours Δ | paper | paper Δ |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for p in sorted(set(curve.points) | set(published), key=lambda p: (
            p not in curve.points, curve.points.index(p) if p in curve.points else 0)):
        mean = curve.mean(p)
        ours_cell = "-" if mean is None else \
            f"{mean:.1f} ± {curve.std(p):.1f} (n={len(curve.values[p])})"
        lines.append(f"| {p} | {ours_cell} | "
                     f"{'-' if p not in ours else f'{ours[p]:+.1f}'} | "
                     f"{'-' if p not in published else f'{published[p]:.1f}'} | "
                     f"{'-' if p not in paper else f'{paper[p]:+.1f}'} |")
    lines += ["", "Verdicts:", "", *(f"- {v}" for v in verdicts(reference, curve)), ""]
    if figure:
        lines.append(f"![{Path(figure).stem}]({figure})\n")
    return "\n".join(lines)


def overlay_figure(reference: dict, curve: Curve, out_dir: Path) -> Path | None:
    """ablation_<axis>.png: ours and the paper's curve, each relative to its own baseline."""
    ours, paper = _relative(reference, curve)
    if not ours:
        return None
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    points = [p for p in curve.points if p in ours or p in paper] + \
        [p for p in paper if p not in curve.points]
    numeric = all((_x(p) or 0) > 0 for p in points)  # a log axis needs positive places
    # A numeric axis is a curve; variants are separate points, ours and the paper's side by side.
    position = {p: _x(p) for p in points} if numeric else {p: i for i, p in enumerate(points)}
    shift, line = (0.0, "-") if numeric else (0.12, "none")
    mine = [p for p in points if p in ours]
    ax.errorbar([position[p] - shift for p in mine], [ours[p] for p in mine],
                yerr=[curve.std(p) for p in mine], marker="o", capsize=3, color="C0",
                linestyle=line, label=f"ours: {curve.column}")
    theirs = [p for p in points if p in paper]
    if theirs:
        ax.plot([position[p] + shift for p in theirs], [paper[p] for p in theirs], marker="s",
                linestyle="--" if numeric else "none", color="C1",
                label=f"paper: {reference['measure']}")
    ax.axhline(0, color="grey", linewidth=0.8)
    if numeric:
        ax.set_xscale("log", base=2 if max(position.values()) > 2 else 10)
    ax.set_xticks([position[p] for p in points], points, rotation=30 if len(points) > 4 else 0,
                  fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel(reference["axis"])
    ax.set_ylabel("top-1 relative to own baseline (points)")
    ax.set_title(f"{reference['axis']}: ours vs the paper (each vs its baseline)", fontsize=9)
    return save_figure(fig, ax, out_dir / f"ablation_{reference['axis'].replace('.', '_')}.png")
