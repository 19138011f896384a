"""Where a running sweep stands, on the console: one plain line per trial event.

`SweepProgress` is a Tune callback on the driver. It prints when a trial starts, after each of
its epochs (loss, the online probe's val top-1 when there is one, images/s, the trial's ETA
and the sweep's), and nothing else: the workers' own lines and Ray's internal warnings stay in
Ray's log files (RUN_DIR/logs) unless the sweep runs with --verbose. The end of a trial (ok,
failed with its reason, stopped) is printed by the sweep's recorder, once.

ETAs come from the epoch times seen so far: a trial's remaining epochs times its mean epoch
time; the sweep's, every unfinished trial's remaining epochs times the mean epoch time over all
trials, divided by the trials that run at once.
"""

from __future__ import annotations

import sys
import time

from ray import tune

from harness.run_log import duration

__all__ = ["SweepProgress"]


class SweepProgress(tune.Callback):
    """Console lines for a sweep's trials. trials: {trial_id: (params, epochs)} still to run."""

    def __init__(self, trials: dict[str, tuple[dict, int]], concurrency: int, out=None):
        self.trials = trials
        self.concurrency = max(1, concurrency)
        self.out = out or sys.stdout
        self.done_epochs = {trial_id: 0 for trial_id in trials}
        self.epoch_s: dict[str, list[float]] = {trial_id: [] for trial_id in trials}
        self.finished: set[str] = set()
        self.started = time.monotonic()

    def _print(self, line: str) -> None:
        print(f"harness sweep: {line}", file=self.out, flush=True)

    @staticmethod
    def _id(trial) -> str:
        return trial.config["trial"]["trial_id"]

    def _label(self, trial_id: str) -> str:
        params = self.trials[trial_id][0]
        return trial_id + "".join(f" {k}={v}" for k, v in params.items() if k != "seed")

    def sweep_eta(self) -> float | None:
        times = [t for ts in self.epoch_s.values() for t in ts]
        if not times:
            return None
        left = sum(epochs - self.done_epochs[trial_id]
                   for trial_id, (_, epochs) in self.trials.items()
                   if trial_id not in self.finished)
        return left * (sum(times) / len(times)) / self.concurrency

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = self._id(trial)
        if trial_id in self.trials:
            epochs = self.trials[trial_id][1]
            self._print(f"{self._label(trial_id)}: started ({epochs} "
                        f"epoch{'' if epochs == 1 else 's'})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = self._id(trial)
        if trial_id not in self.trials or "epoch" not in result:
            return
        epochs = self.trials[trial_id][1]
        self.done_epochs[trial_id] = int(result["epoch"])
        if "time/epoch_s" in result:
            self.epoch_s[trial_id].append(float(result["time/epoch_s"]))
        parts = [f"epoch {result['epoch']}/{epochs}"]
        if "loss/total" in result:
            parts.append(f"loss {result['loss/total']:.4g}")
        if "probe/val_top1" in result:
            parts.append(f"probe val top-1 {result['probe/val_top1']:.3f}")
        if "throughput/images_per_s" in result:
            parts.append(f"{result['throughput/images_per_s']:.1f} images/s")
        mine = self.epoch_s[trial_id]
        if mine:
            parts.append(f"trial ETA {duration((epochs - self.done_epochs[trial_id]) * sum(mine) / len(mine))}")
        eta = self.sweep_eta()
        if eta is not None:
            parts.append(f"sweep ETA {duration(eta)}")
        self._print(f"{self._label(trial_id)}: " + ", ".join(parts))

    def _end(self, trial) -> None:
        self.finished.add(self._id(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial)
