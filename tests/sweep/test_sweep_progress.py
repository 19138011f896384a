"""The sweep's console (harness.sweep.progress): events once, the overview in place on a
terminal and as plain lines every so often elsewhere. Driven here through the Tune callback
methods the sweep's controller calls, with the fields a Tune trial carries (its config)."""

import io
from types import SimpleNamespace

from harness.sweep.progress import SweepProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": {"trial_id": trial_id, "name": trial_id}})


TRIALS = {"t0000": ({"loss.lambd": 0.0025, "seed": 0}, 2),
          "t0001": ({"loss.lambd": 0.01, "seed": 0}, 2)}
EPOCH = {"epoch": 1, "loss/total": 19.81, "probe/val_top1": 0.186,
         "throughput/images_per_s": 81.6, "time/epoch_s": 30.0}


def _run(out, clock) -> SweepProgress:
    progress = SweepProgress(TRIALS, 2, out, resumed={"t0001": 1}, every_s=60, clock=clock)
    progress.on_trial_start(0, [], _trial("t0000"))
    progress.on_trial_start(0, [], _trial("t0001"))
    progress.on_trial_result(0, [], _trial("t0000"), EPOCH)
    clock.now = 61.0
    progress.on_step_end(0, [])
    progress.on_trial_result(0, [], _trial("t0000"), {**EPOCH, "epoch": 2})
    progress.finish("t0000", "ok")
    progress.finish("t0001", "failed", "loss is nan at epoch 2 (step 9)")
    return progress


def test_plain_output_prints_each_event_once_and_the_overview_every_minute():
    out, clock = io.StringIO(), _Clock()
    _run(out, clock)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[:2] == ["harness sweep: t0000 loss.lambd=0.0025: started (2 epochs)",
                         "harness sweep: t0001 loss.lambd=0.01: resumed at epoch 1/2"]
    assert lines[2] == ("harness sweep: t0000 loss.lambd=0.0025: epoch 1/2, loss 19.81, probe "
                        "val top-1 0.186, 81.6 images/s, trial ETA 30s, sweep ETA 30s")
    assert lines[3:7] == [
        "harness sweep: overview:",
        "harness sweep: t0000 loss.lambd=0.0025, running, epoch 1/2, loss 19.81, probe val "
        "top-1 0.186, 81.6 images/s, ETA 30s",
        "harness sweep: t0001 loss.lambd=0.01, running, epoch 1/2",
        "harness sweep: sweep: 2 running, ETA 30s"]
    assert lines[8:] == ["harness sweep: t0000 loss.lambd=0.0025: trained, evaluating",
                         "harness sweep: t0000 ok",
                         "harness sweep: t0001 failed: loss is nan at epoch 2 (step 9)"]


def test_terminal_redraws_the_overview_in_place_below_the_events():
    out, clock = _Terminal(), _Clock()
    progress = _run(out, clock)
    text = out.getvalue()
    # No per-epoch lines: the overview holds them, erased (cursor up 3, clear) and redrawn.
    assert ": epoch 1/2" not in text and "\x1b[3F\x1b[J" in text
    final = text.rsplit("\x1b[3F\x1b[J", 1)[1].splitlines()
    assert final == ["harness sweep: t0001 failed: loss is nan at epoch 2 (step 9)",
                     "  t0000 loss.lambd=0.0025, ok, epoch 2/2, loss 19.81, probe val top-1 "
                     "0.186, 81.6 images/s",
                     "  t0001 loss.lambd=0.01, failed, epoch 1/2",
                     "  sweep: 1 ok, 1 failed"]
    assert progress.drawn == 3
    events = [line for line in text.replace("\x1b[3F\x1b[J", "\n").splitlines()
              if line.startswith("harness sweep: ")]
    assert events == ["harness sweep: t0000 loss.lambd=0.0025: started (2 epochs)",
                      "harness sweep: t0001 loss.lambd=0.01: resumed at epoch 1/2",
                      "harness sweep: t0000 loss.lambd=0.0025: trained, evaluating",
                      "harness sweep: t0000 ok",
                      "harness sweep: t0001 failed: loss is nan at epoch 2 (step 9)"]
