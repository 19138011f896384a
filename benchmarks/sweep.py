"""Sweep benchmark: the demo sweep's efficiency, and ASHA against no scheduler, side by side.

Runs `harness sweep` twice on the same sweep file, in fresh folders: as written (FIFO, every
trial to the end), and with an ASHA scheduler on the online probe (grace period 1 epoch,
reduction factor 2). For each it prints:
  - wall time, command to the end of the sweep (report included);
  - time from the command to the first training step of any trial;
  - Ray overhead: the share of the trials' wall time spent neither in training epochs (steps,
    probe evaluation), nor in evaluation proper (feature extraction and fits): Ray Train's
    start-up, FFCV pipeline compilation, checkpoints, the evaluation task's start-up;
  - compute: the sum of the trials' training epoch times (what ASHA saves), and whether both
    runs pick the same best configuration by the sweep's metric.

    .venv/bin/python benchmarks/sweep.py [experiments/sweep_cifar10_demo.yaml] [--set key=value]

With --against REV it compares code instead: the same sweep (FIFO) from this working tree and
from git revision REV (a temporary worktree), taking turns for --rounds rounds after --warmup
untimed ones, each run in fresh folders; --trials runs only those trials of the file (a trial's
overhead, alone).

    .venv/bin/python benchmarks/sweep.py --against d0fc73e --trials t0000 --rounds 2
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.provenance import hardware, library_versions
from harness.results.layout import metric_value, read_sweep, read_trials
from harness.results.table import best_trial
from harness.pretrain.run_log import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run(sweep_files: list[Path], storage: Path, sets: list[str], tree: Path = REPO,
        extra: tuple[str, ...] = ()) -> dict:
    """One `harness sweep` of the code in `tree` (its harness first on every process's path);
    several files in one command, their trials counted together (the best: of the first)."""
    from harness.sweep.config import load_sweep

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(tree)
    start_unix, start = time.time(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", *map(str, sweep_files),
                           "--storage", str(storage), *[a for s in sets for a in ("--set", s)],
                           *extra], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    run_dirs = [storage / load_sweep(f, check_data=False).name for f in sweep_files]
    run_dir = run_dirs[0]
    trials = read_trials(run_dir)
    located = [(d, t) for d in run_dirs for t in read_trials(d)]
    firsts, epochs_s, wall_s, eval_proper, eval_task = [], 0.0, 0.0, 0.0, 0.0
    for folder, t in located:
        metrics = read_metrics(folder / "trials" / t["trial_id"] / "pretrain")
        firsts += [m["time/first_step_unix"] for m in metrics if "time/first_step_unix" in m]
        epochs_s += sum(m.get("time/epoch_s", 0) + m.get("time/eval_s", 0) for m in metrics)
        timing = t.get("timing", {})
        wall_s += timing.get("wall_s", 0.0)
        eval_task += timing.get("eval_s", 0.0)
        eval_proper += sum(r.get("wall_time_s", 0.0) for r in t["evals"].values())
    metric = (read_sweep(run_dir) or {}).get("metric") or "knn/val/k200_top1"
    best_id = best_trial([t for t in trials if t["status"] == "ok"], metric)  # chosen on val
    best = next((t for t in trials if t["trial_id"] == best_id), None)
    return {
        "wall_s": wall, "first_step_s": min(firsts) - start_unix if firsts else None,
        "trials": len(located), "statuses": {s: sum(t["status"] == s for _, t in located)
                                             for s in ("ok", "stopped", "failed")},
        "train_compute_s": epochs_s, "trial_wall_s": wall_s,
        "ray_overhead": (wall_s - epochs_s - eval_proper) / wall_s if wall_s else None,
        "eval_stage_s": eval_task, "metric": metric,
        "best": best["params"] if best else None,
        "best_value": metric_value(best["evals"], metric) if best else None,
        "best_test_value": (metric_value(best["evals"], metric.replace("/val/", "/test/"))
                            if best else None),
    }


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def compare_revisions(sweep_files: list[Path], sets: list[str], rev: str, rounds: int,
                      trials: list[str], warmup: int = 1,
                      eval_sets: tuple[str, ...] = ()) -> dict:
    """The sweep (one command of all `sweep_files`) from this tree and from `rev`, taking
    turns; medians per tree."""
    from harness.provenance import git_revision
    from harness.sweep.config import load_sweep

    # Relative data folders resolve against this checkout, for both trees.
    data = load_sweep(sweep_files[0], overrides=sets,
                      only=trials or None).trials[0].config.data.dir
    sets = [f"data.dir={data}", *sets]
    extra = (("--trials", *trials) if trials else ()) + \
        tuple(a for e in eval_sets for a in ("--eval-set", e))
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        tmp = Path(tmp)
        old = tmp / "rev"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), rev], cwd=REPO,
                       check=True, capture_output=True)
        trees = {f"working tree ({git_revision()})": REPO, f"revision {rev}": old}
        try:
            # Round 0 is a warm-up, not counted: numba's disk cache is keyed by the source
            # file's path, so the worktree's first run compiles the loader's kernels anew.
            for r in range(warmup + rounds):
                for i, (label, tree) in enumerate(trees.items()):
                    row = run(sweep_files, tmp / f"round{r}_{i}", sets, tree, extra)
                    if r >= warmup:
                        rows.setdefault(label, []).append(row)
                    print(f"{label}, {'warm-up' if r < warmup else 'round'} {r + 1}: "
                          f"{json.dumps(row)}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           capture_output=True)
    print(f"\nsweep {' '.join(f.name for f in sweep_files)}"
          f"{' ' + ' '.join(extra) if extra else ''}, --set {sets}; "
          f"{warmup} warm-up and {rounds} timed rounds, taking turns; medians")
    print(f"machine: {platform.processor() or platform.machine()}, {hardware()['cpus']} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end; versions: {library_versions()}\n")
    print("| code | wall s | to first step s | trials' wall s | of it evaluation s | "
          "training epochs s | Ray overhead | wall vs " + list(trees)[1] + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = _median([r["wall_s"] for r in rows[list(trees)[1]]])
    for label, runs in rows.items():
        m = {k: _median([r[k] for r in runs]) for k in
             ("wall_s", "first_step_s", "trial_wall_s", "eval_stage_s", "train_compute_s",
              "ray_overhead")}
        print(f"| {label} | {m['wall_s']:.0f} | {m['first_step_s']:.0f} | "
              f"{m['trial_wall_s']:.0f} | {m['eval_stage_s']:.0f} | {m['train_compute_s']:.0f} | "
              f"{100 * m['ray_overhead']:.0f}% | {m['wall_s'] / base:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="*",
                        default=[str(REPO / "experiments" / "sweep_cifar10_demo.yaml")],
                        help="sweep files (several: one command, with --against only)")
    parser.add_argument("--set", action="append", default=[], help="passed to every trial")
    parser.add_argument("--json", default=None)
    parser.add_argument("--against", metavar="REV", default=None,
                        help="compare this working tree with git revision REV (FIFO both)")
    parser.add_argument("--rounds", type=int, default=2, help="with --against")
    parser.add_argument("--warmup", type=int, default=1, help="with --against: untimed rounds")
    parser.add_argument("--trials", nargs="+", default=[], help="with --against: these only")
    parser.add_argument("--eval-set", action="append", default=[],
                        help="with --against: passed to every file's evaluation")
    args = parser.parse_args()
    sweep_files = [Path(f).resolve() for f in args.sweep]
    if args.against:
        rows = compare_revisions(sweep_files, args.set, args.against, args.rounds, args.trials,
                                 args.warmup, tuple(args.eval_set))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    if len(sweep_files) > 1:
        sys.exit("several sweep files: only with --against (FIFO against ASHA takes one)")
    (sweep_file,) = sweep_files
    raw = yaml.safe_load(sweep_file.read_text())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        tmp = Path(tmp)
        asha_file = tmp / sweep_file.name
        raw_asha = {**raw, "experiment": str((sweep_file.parent / raw["experiment"]).resolve()),
                    "scheduler": {"type": "asha", "metric": "probe/val_top1", "grace_period": 1,
                                  "reduction_factor": 2}}
        asha_file.write_text(yaml.safe_dump(raw_asha))
        for label, path in (("FIFO (no scheduler)", sweep_file), ("ASHA", asha_file)):
            rows[label] = run([path], tmp / label.split()[0].lower(), args.set)
            print(f"{label}: {json.dumps(rows[label])}", flush=True)

    print(f"\nsweep {sweep_file.name} ({rows['ASHA']['trials']} trials), --set {args.set}")
    print(f"machine: {platform.processor() or platform.machine()}, {hardware()['cpus']} CPUs; "
          f"versions: {library_versions()}\n")
    fifo = rows["FIFO (no scheduler)"]
    print("| run | wall s | to first step s | trials ok / stopped | training compute s | "
          "compute vs FIFO | Ray overhead | best point | best " + fifo["metric"] + " |")
    print("|---|---:|---:|---|---:|---:|---:|---|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['wall_s']:.0f} | {r['first_step_s']:.0f} | "
              f"{r['statuses']['ok']} / {r['statuses']['stopped']} | {r['train_compute_s']:.0f} | "
              f"{r['train_compute_s'] / fifo['train_compute_s']:.2f} | {100 * r['ray_overhead']:.0f}% | "
              f"{r['best']} | {100 * r['best_value']:.1f} |")
    same = rows["ASHA"]["best"] == fifo["best"]
    print(f"\nsame best configuration with and without ASHA: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
