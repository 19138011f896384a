"""Where a running sweep stands, on the console.

`SweepProgress` is a Tune callback on the driver. Every state change of a trial is printed
once, as a plain line: started (or resumed at its saved epoch), evaluating, and its end (ok,
failed with its reason, stopped by ASHA; the sweep's recorder reports ends through `finish`).
Between them:
- on a terminal, an overview of every trial (id, swept values, state, epoch k/n, loss, the
  online probe's val top-1, images/s, ETA) and a sweep line, redrawn in place below the
  events at most once a second;
- elsewhere (CI, `ray job submit`, a log file), a plain line after each epoch of a trial, and
  the overview appended as plain lines every `every_s` seconds (default 60).
The workers' own lines and Ray's internal warnings stay in Ray's log files (RUN_DIR/logs)
unless the sweep runs with --verbose.

ETAs come from the epoch times seen so far: a trial's remaining epochs times its mean epoch
time; the sweep's, every unfinished trial's remaining epochs times the mean epoch time over all
trials, divided by the trials that run at once.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ray import tune

from harness.pretrain.run_log import duration

__all__ = ["SweepProgress", "TrialState"]

_CLEAR_UP = "\x1b[{n}F\x1b[J"      # cursor to the start of the line n up, erase to the end


@dataclass
class TrialState:
    label: str
    epochs: int
    state: str = "pending"
    epoch: int = 0
    loss: float | None = None
    probe: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None


class SweepProgress(tune.Callback):
    """The sweep's console. trials: {name: (params, epochs)} still to run (name: the trial's id,
    or "<sweep>-<id>" beside other sweeps in one Tune run); resumed: {name: epochs already
    done} of those that continue from a checkpoint."""

    def __init__(self, trials: dict[str, tuple[dict, int]], concurrency: int, out=None, *,
                 resumed: dict[str, int] | None = None, every_s: float = 60.0,
                 redraw: bool = True, clock=time.monotonic):
        self.out = out or sys.stdout
        # redraw=False (--verbose: Ray's lines interleave): plain lines on a terminal too.
        self.tty = redraw and bool(getattr(self.out, "isatty", lambda: False)())
        self.concurrency = max(1, concurrency)
        self.every_s, self.clock = every_s, clock
        self.resumed = resumed or {}
        self.states = {trial_id: TrialState(self._label(trial_id, params), epochs,
                                            epoch=self.resumed.get(trial_id, 0))
                       for trial_id, (params, epochs) in trials.items()}
        self.epoch_s: dict[str, list[float]] = {trial_id: [] for trial_id in trials}
        self.drawn = 0                          # lines of the overview on screen (terminal)
        self.last_overview = clock()
        self.last_draw = 0.0

    @staticmethod
    def _label(trial_id: str, params: dict) -> str:
        return trial_id + "".join(f" {k}={v}" for k, v in params.items() if k != "seed")

    @staticmethod
    def _id(trial) -> str:
        return trial.config["trial"]["name"]

    # -- what is printed --------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def event(self, line: str) -> None:
        """A line printed once (above the overview on a terminal)."""
        if self.tty and self.drawn:
            self._write(_CLEAR_UP.format(n=self.drawn))
            self.drawn = 0
        self._write(f"harness sweep: {line}\n")
        if self.tty:
            self._draw()

    def overview(self) -> list[str]:
        lines = []
        for s in self.states.values():
            parts = [s.label, s.state, f"epoch {s.epoch}/{s.epochs}"]
            if s.loss is not None:
                parts.append(f"loss {s.loss:.4g}")
            if s.probe is not None:
                parts.append(f"probe val top-1 {s.probe:.3f}")
            if s.images_per_s is not None:
                parts.append(f"{s.images_per_s:.1f} images/s")
            if s.state == "running" and s.eta_s is not None:
                parts.append(f"ETA {duration(s.eta_s)}")
            lines.append("  " + ", ".join(parts))
        counts: dict[str, int] = {}
        for s in self.states.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        eta = self.sweep_eta() if {"pending", "running"} & set(counts) else None
        lines.append("  sweep: " + ", ".join(f"{n} {state}" for state, n in counts.items())
                     + (f", ETA {duration(eta)}" if eta is not None else ""))
        return lines

    def _draw(self) -> None:
        if self.drawn:
            self._write(_CLEAR_UP.format(n=self.drawn))
        lines = self.overview()
        self._write("".join(f"{line}\n" for line in lines))
        self.drawn = len(lines)
        self.last_draw = self.clock()

    def on_step_end(self, iteration, trials, **info):
        now = self.clock()
        if self.tty:
            if now - self.last_draw >= 1.0:
                self._draw()
        elif now - self.last_overview >= self.every_s:
            self.last_overview = now
            self._write("".join(f"harness sweep: {line.strip()}\n"
                                for line in ["overview:", *self.overview()]))

    # -- what is measured -------------------------------------------------------------------

    def sweep_eta(self) -> float | None:
        times = [t for ts in self.epoch_s.values() for t in ts]
        if not times:
            return None
        left = sum(s.epochs - s.epoch for s in self.states.values()
                   if s.state in ("pending", "running"))
        return left * (sum(times) / len(times)) / self.concurrency

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = self._id(trial)
        s = self.states.get(trial_id)
        if s is None:
            return
        s.state = "running"
        if trial_id in self.resumed:
            self.event(f"{s.label}: resumed at epoch {s.epoch}/{s.epochs}")
        else:
            self.event(f"{s.label}: started ({s.epochs} epoch{'' if s.epochs == 1 else 's'})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = self._id(trial)
        s = self.states.get(trial_id)
        if s is None or "epoch" not in result:
            return
        s.epoch = int(result["epoch"])
        if "time/epoch_s" in result:
            self.epoch_s[trial_id].append(float(result["time/epoch_s"]))
        s.loss = result.get("loss/total", s.loss)
        s.probe = result.get("probe/val_top1", s.probe)
        s.images_per_s = result.get("throughput/images_per_s", s.images_per_s)
        mine = self.epoch_s[trial_id]
        s.eta_s = (s.epochs - s.epoch) * sum(mine) / len(mine) if mine else None
        if not self.tty:
            parts = [f"epoch {s.epoch}/{s.epochs}"]
            if "loss/total" in result:
                parts.append(f"loss {s.loss:.4g}")
            if "probe/val_top1" in result:
                parts.append(f"probe val top-1 {s.probe:.3f}")
            if "throughput/images_per_s" in result:
                parts.append(f"{s.images_per_s:.1f} images/s")
            if s.eta_s is not None:
                parts.append(f"trial ETA {duration(s.eta_s)}")
            eta = self.sweep_eta()
            if eta is not None:
                parts.append(f"sweep ETA {duration(eta)}")
            self._write(f"harness sweep: {s.label}: " + ", ".join(parts) + "\n")
        if s.epoch >= s.epochs:
            s.state = "evaluating"
            self.event(f"{s.label}: trained, evaluating")
        elif self.tty:
            self._draw()

    def finish(self, trial_id: str, status: str, error: str | None = None) -> None:
        """A trial's end, once: ok, failed (with the reason) or stopped."""
        s = self.states.get(trial_id)
        if s is not None:
            s.state = status
        self.event(f"{trial_id} {status}" + (f": {error}" if error else ""))
