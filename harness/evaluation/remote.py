"""Evaluation as the last stage of a training run or a sweep trial: a Ray task on the run's
resources (its GPU where it trained on one), so that it runs where the run ran."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import ray

from harness.config.schema import WorkersConfig
from harness.evaluation.settings import EvalSettings

__all__ = ["evaluate_in_ray"]


def _task(source: str, protocols, data_dir, transfer_dirs, settings: dict, init: str,
          threads: int) -> list[dict]:
    import torch

    from harness.evaluation.backbone import load_backbone, random_backbone
    from harness.evaluation.runner import evaluate

    torch.set_num_threads(threads)
    settings = EvalSettings.from_dict(settings)
    backbone = load_backbone(source)
    if init == "random":
        backbone = random_backbone(backbone, settings.seed)
    return evaluate(backbone, protocols, data_dir, transfer_dirs=transfer_dirs,
                    settings=settings, with_baseline=init == "both")


def _largest_node_cpus() -> int:
    return int(max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]),
                   default=1))


def evaluate_in_ray(source: Path | str, protocols: Sequence[str], data_dir: Path | str | None, *,
                    transfer_dirs: Sequence[Path | str] = (), settings: EvalSettings,
                    workers: WorkersConfig, init: str = "pretrained") -> list[dict]:
    """harness.evaluation.evaluate on the run's resources: one GPU, or all its worker CPUs.

    init: "pretrained" (the checkpoint), "random" (its architecture, initial weights) or "both".
    """
    if init not in ("pretrained", "random", "both"):
        raise ValueError(f"init={init!r}: choose pretrained, random or both")
    cpus = workers.cpus_per_worker * (1 if workers.use_gpu else workers.num_workers)
    # One task runs on one node: a CPU run whose workers spanned several nodes is evaluated
    # with as many CPUs as the largest node has (asking for more would wait forever).
    cpus = max(1, min(cpus, _largest_node_cpus()))
    # "DEFAULT": outside the caller's placement group. A sweep trial's function holds a bundle
    # with no CPU (harness.sweep.run); a task captured into it could never be scheduled.
    task = ray.remote(_task).options(num_cpus=cpus, num_gpus=1 if workers.use_gpu else 0,
                                     max_retries=0, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(str(source), list(protocols),
                               str(data_dir) if data_dir else None,
                               [str(d) for d in transfer_dirs], dataclasses.asdict(settings),
                               init, cpus))
