"""The report's TensorBoard runs: the sweep in the HParams dashboard, the figures under Images.

    <report>/tensorboard/hparams/               the experiment: every swept key, with the values
                                                it took, and the metrics to show against them
    <report>/tensorboard/hparams/<trial_id>/    one session per trial: its params, its status,
                                                its final metrics as scalars, each eval's on
                                                val and on test ("linear/val/top1",
                                                "linear/test/top1"), and the training summary
                                                ("train/probe_val_top1", ...)
    <report>/tensorboard/figures/               the ablation PNGs as images

Each trial's training curves are already under RUN_DIR/trials/<id>/pretrain/tensorboard, so
`tensorboard --logdir RUN_DIR` shows all three. Protobufs come from tensorboard's own
summary_v2 (no TensorFlow needed) and go through torch's SummaryWriter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from harness.results.layout import STATUSES, metric_value

__all__ = ["TRAIN_METRICS", "write_tensorboard"]

# Training summaries shown beside the evaluations, as "train/<key>" metrics.
TRAIN_METRICS = ("probe_val_top1", "loss", "images_per_s", "time_s")


def _hparam_value(value):
    # HParams holds floats, strings and bools; ints become floats so the axis sorts numerically.
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def _domain(values: list):
    if values and all(isinstance(v, float) for v in values):
        return hp.Discrete(sorted(set(values)))
    return hp.Discrete(sorted({str(v) for v in values}))


def _session_hparams(trial: dict, keys: list[str], domains: dict) -> dict:
    values = {k: _hparam_value(trial["params"][k]) for k in keys if k in trial["params"]}
    # A key whose domain became strings (mixed types) must be logged as a string too.
    values = {k: (str(v) if domains[k].dtype is str else v) for k, v in values.items()}
    return {**values, "status": trial["status"]}


def write_tensorboard(tb_dir: Path, trials: list[dict], keys: list[str], metrics: list[str],
                      figures: list[Path]) -> None:
    """`metrics`: the report's columns, val and test alike (HParams shows both; it chooses
    nothing)."""
    columns = [*metrics, *(f"train/{k}" for k in TRAIN_METRICS)]
    taken = {k: [_hparam_value(t["params"][k]) for t in trials if k in t["params"]] for k in keys}
    keys = [k for k in keys if taken[k]]  # e.g. a sweep key no trial has reported yet
    domains = {k: _domain(taken[k]) for k in keys}
    hparams = [hp.HParam(k, domains[k]) for k in keys]
    hparams.append(hp.HParam("status", hp.Discrete(list(STATUSES))))
    with SummaryWriter(str(tb_dir / "hparams")) as writer:
        writer.file_writer.add_summary(hp.hparams_config_pb(
            hparams, [hp.Metric(c) for c in columns]))
    for t in trials:
        values = {m: metric_value(t["evals"], m) for m in metrics}
        values.update({f"train/{k}": t["train"].get(k) for k in TRAIN_METRICS})
        step = int(t["train"].get("steps") or 0)
        with SummaryWriter(str(tb_dir / "hparams" / t["trial_id"])) as writer:
            writer.file_writer.add_summary(hp.hparams_pb(
                _session_hparams(t, keys, domains), trial_id=t["trial_id"]))
            for tag, value in values.items():
                if value is not None:
                    writer.add_scalar(tag, value, step)
    if figures:
        with SummaryWriter(str(tb_dir / "figures")) as writer:
            for path in figures:
                image = np.asarray(Image.open(path).convert("RGB"))
                writer.add_image(f"ablation/{path.stem}", image, 0, dataformats="HWC")
