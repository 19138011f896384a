"""Evaluation as the last stage of a training run or a sweep trial, on the run's own resources.

Inside the run (`harness pretrain --eval`, every sweep trial): the driver hands an evaluation
request to the Train workers (`EvalRequest`, in train_loop_config), and after the last epoch
rank 0 evaluates the run's newest checkpoint in its own process, on its device, with the CPUs
its node's workers held: no new process, no second import of torch and FFCV, no wait for Ray to
schedule a task. It writes the outcome, records or the reason they are missing, to
`evaluation.json` in the run's location (a folder or a URI), which the driver reads after
`fit()` (`read_outcome`). An evaluation error is the outcome, not a worker failure: Ray Train
would otherwise restart the worker group and fail the same way again. A worker group that
Ray restarts (a lost node) resumes at the last epoch and evaluates again.

As a Ray task (`evaluate_in_ray`): a sweep's random-init baseline, after its trials, on every
CPU of the machine.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

from harness import storage
from harness.config.schema import WorkersConfig
from harness.evaluation.settings import EvalSettings

__all__ = ["evaluate_in_ray", "EvalRequest", "evaluate_run", "clear_outcome", "read_outcome",
           "EvaluationError", "OUTCOME_FILE"]

OUTCOME_FILE = "evaluation.json"
_INITS = ("pretrained", "random", "both")


class EvaluationError(RuntimeError):
    """The run trained but its evaluation did not give records; the message says why."""


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What the run's rank 0 evaluates after training (plain values: it travels to workers)."""

    protocols: tuple[str, ...]
    settings: dict                      # EvalSettings as a dict
    transfer_dirs: tuple[str, ...] = ()
    init: str = "pretrained"            # pretrained | random | both

    def __post_init__(self):
        if self.init not in _INITS:
            raise ValueError(f"init={self.init!r}: choose {', '.join(_INITS)}")

    @classmethod
    def of(cls, protocols: Sequence[str], settings: EvalSettings,
           transfer_dirs: Sequence[Path | str] = (), init: str = "pretrained") -> "EvalRequest":
        return cls(tuple(protocols), dataclasses.asdict(settings),
                   tuple(str(d) for d in transfer_dirs), init)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, data_dir: Path | str, resolution: int) -> None:
        """Everything this evaluation of a run training on `data_dir` at `resolution` will
        read, checked before the run trains (data sets, subset lists, transfer targets)."""
        from harness.config.schema import ConfigError
        from harness.evaluation.runner import plan_inputs

        settings = EvalSettings.from_dict(self.settings)
        try:
            plan_inputs(self.protocols, data_dir, transfer_dirs=self.transfer_dirs,
                        settings=settings, resolution=settings.resolution or resolution)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None

    @classmethod
    def from_dict(cls, raw: dict) -> "EvalRequest":
        return cls(tuple(raw["protocols"]), dict(raw["settings"]),
                   tuple(raw["transfer_dirs"]), raw["init"])


def _evaluate(source: str, request: EvalRequest, data_dir: str | None, device=None) -> list[dict]:
    from harness.evaluation.backbone import load_backbone, random_backbone
    from harness.evaluation.runner import evaluate

    settings = EvalSettings.from_dict(request.settings)
    backbone = load_backbone(source)
    if request.init == "random":
        backbone = random_backbone(backbone, settings.seed)
    return evaluate(backbone, request.protocols, data_dir, transfer_dirs=request.transfer_dirs,
                    settings=settings, with_baseline=request.init == "both", device=device)


def _outcome_path(run_location: Path | str) -> str:
    return storage.join(str(run_location), OUTCOME_FILE)


def clear_outcome(run_location: Path | str) -> None:
    """Before a run that will evaluate: an outcome left by an earlier launch is not this one's."""
    storage.delete(_outcome_path(run_location))


def evaluate_run(run_location: Path | str, request: EvalRequest, data_dir: str | None, *,
                 device=None, threads: int | None = None) -> dict:
    """In the run's rank 0, after its last checkpoint: evaluate it, write the outcome."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        outcome = {"records": _evaluate(str(run_location), request, data_dir, device),
                   "error": None}
    except Exception as err:  # noqa: BLE001 - any evaluation error is the run's outcome
        text = str(err).strip().splitlines()
        outcome = {"records": [], "error": f"{type(err).__name__}: {text[-1] if text else ''}"}
    outcome["wall_s"] = round(time.perf_counter() - start, 3)
    storage.write_text(_outcome_path(run_location), json.dumps(outcome, indent=2) + "\n")
    return outcome


def read_outcome(run_location: Path | str) -> dict:
    """What the run's evaluation wrote: {"records": [...], "error": None, "wall_s": seconds};
    EvaluationError if it failed or wrote nothing."""
    text = storage.read_text(_outcome_path(run_location))
    if text is None:
        raise EvaluationError(f"the run trained but wrote no {OUTCOME_FILE} in {run_location}: "
                              "its evaluation did not run (see the run's worker log)")
    outcome = json.loads(text)
    if outcome["error"]:
        raise EvaluationError(outcome["error"])
    return outcome


def _largest_node_cpus() -> int:
    import ray

    return int(max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]),
                   default=1))


def _task(source: str, request: dict, data_dir, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    return _evaluate(source, EvalRequest.from_dict(request), data_dir)


def evaluate_in_ray(source: Path | str, protocols: Sequence[str], data_dir: Path | str | None, *,
                    transfer_dirs: Sequence[Path | str] = (), settings: EvalSettings,
                    workers: WorkersConfig, init: str = "pretrained") -> list[dict]:
    """harness.evaluation.evaluate as a Ray task: one GPU, or all the workers' CPUs.

    init: "pretrained" (the checkpoint), "random" (its architecture, initial weights) or "both".
    """
    import ray

    request = EvalRequest.of(protocols, settings, transfer_dirs, init)
    cpus = workers.cpus_per_worker * (1 if workers.use_gpu else workers.num_workers)
    # One task runs on one node: a CPU run whose workers spanned several nodes is evaluated
    # with as many CPUs as the largest node has (asking for more would wait forever).
    cpus = max(1, min(cpus, _largest_node_cpus()))
    # "DEFAULT": outside the caller's placement group. A sweep trial's function holds a bundle
    # with no CPU (harness.sweep.run); a task captured into it could never be scheduled.
    task = ray.remote(_task).options(num_cpus=cpus, num_gpus=1 if workers.use_gpu else 0,
                                     max_retries=0, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(str(source), request.to_dict(),
                               str(data_dir) if data_dir else None, cpus))
