"""Rank 0's record of a run: TensorBoard events and metrics.jsonl, side by side in the run dir.

    <run dir>/tensorboard/events.out.tfevents.*   scalars, the augmentation grid, the config
    <run dir>/metrics.jsonl                       one JSON object per epoch, the same scalars

A run that resumes from its checkpoint at step S (after a failure, or restarted by name) drops
what the interrupted attempt logged after S: TensorBoard through `purge_step`, metrics.jsonl by
rewriting it. Each epoch then appears once, with the values of the attempt that checkpointed it.
Every other rank gets a RunLog that writes nothing, so the training loop need not ask.

A run stored at a URI (`mirror`, harness.storage) keeps both in this node's working folder and
mirrors them after every epoch: a RunLog opened on another node (rank 0 restarted there after a
node loss) first replaces its folder's copy with what the URI holds, so nothing is lost or
logged twice.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from harness import storage

__all__ = ["RunLog", "METRICS_FILE", "DIVERGED_FILE", "read_metrics", "read_divergence", "duration"]

METRICS_FILE = "metrics.jsonl"
# Written by rank 0 when the loss became non-finite and the run stopped (harness.pretrain.worker).
DIVERGED_FILE = "diverged.json"


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h04m': what a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def read_divergence(run: Path | str) -> str | None:
    """Why the run stopped on a non-finite loss ("loss is nan at epoch 2 (step 17)"), or None.
    run: its folder or URI."""
    text = storage.read_text(storage.join(str(run), DIVERGED_FILE))
    return json.loads(text)["reason"] if text else None


def read_metrics(run: Path | str) -> list[dict]:
    """The epoch records of a run (its folder or URI), oldest first.

    A last line without its newline is being appended (or was cut by a crash): left out.
    """
    text = storage.read_text(storage.join(str(run), METRICS_FILE))
    if text is None:
        return []
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


class RunLog:
    def __init__(self, run_dir: Path | str, *, resume_step: int, enabled: bool,
                 mirror: str | None = None):
        self.writer = None
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.mirror = mirror
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / METRICS_FILE
        if mirror:
            # This node's copy may be stale or missing: the URI holds the run's record.
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
            self.jsonl.unlink(missing_ok=True)
            storage.download(mirror, self.run_dir, METRICS_FILE)
            storage.download(mirror, self.run_dir, "tensorboard")
            storage.delete(storage.join(mirror, DIVERGED_FILE))
        kept = [m for m in read_metrics(self.run_dir) if m["step"] <= resume_step]
        self.jsonl.write_text("".join(json.dumps(m) + "\n" for m in kept))
        (self.run_dir / DIVERGED_FILE).unlink(missing_ok=True)  # an earlier attempt's verdict
        # Events at steps > resume_step belong to an attempt that never checkpointed them.
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step + 1)
        self._sync()

    def _sync(self, *parts: str) -> None:
        """Mirror metrics.jsonl and TensorBoard (and `parts`) to the run's URI, if it has one."""
        if self.mirror:
            for part in (METRICS_FILE, "tensorboard", *parts):
                storage.upload(self.run_dir, self.mirror, part)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def epoch(self, metrics: dict, step: int) -> None:
        """TensorBoard scalars (x = optimizer step) and one metrics.jsonl line."""
        if self.writer is None:
            return
        self.scalars({k: v for k, v in metrics.items() if "/" in k}, step)
        self.writer.flush()
        record = {"time": time.time(), **metrics}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._sync()

    def image(self, tag: str, image: torch.Tensor, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, 0)

    def diverged(self, reason: str, step: int) -> None:
        if self.enabled:
            path = self.run_dir / DIVERGED_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"reason": reason, "step": step}) + "\n")
            tmp.replace(path)
            self._sync(DIVERGED_FILE)

    def close(self, *parts: str) -> None:
        """Close TensorBoard's file; mirror the run's record (and `parts`: export/) a last time."""
        if self.writer is not None:
            self.writer.close()
            self._sync(*parts)
