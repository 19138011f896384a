"""The pretraining driver: config in, a Ray Train run out (the library; its command,
`harness pretrain`, is harness.pretrain.command).

    cfg = load_config("experiments/cifar10_cpu.yaml", ["epochs=2"])
    result = pretrain(cfg)                      # blocks until the run ends

The driver checks everything it can before Ray starts (the config, the data set, that a run
resumed by name has the same model, that a local machine has the CPUs/GPUs asked for), then
builds one TorchTrainer: ScalingConfig from `workers`, RunConfig(storage_path, name) with
checkpoints kept by `run.keep_checkpoints` and FailureConfig(run.max_failures). Train V2 resumes
a run whose storage_path/name already holds checkpoints from the newest of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.ray_runtime import ray_session  # first: sets Ray's environment before `import ray`

import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
try:  # Train V2's own module, so another Ray release may move it
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # noqa: E402
except ImportError:  # then FFCVTrainer keeps every callback, as TorchTrainer does
    DatasetsCallback = None

from harness import storage  # noqa: E402
from harness.checkpoint import latest_checkpoint, saved_config  # noqa: E402
from harness.config import ConfigError, PretrainConfig, RunSettings  # noqa: E402
from harness.evaluation.remote import EvalRequest, clear_outcome  # noqa: E402
from harness.provenance import record_provenance, usable_cpus  # noqa: E402
from harness.pretrain.worker import train_loop  # noqa: E402

__all__ = ["pretrain", "build_trainer", "record_launch", "check_resume", "check_local_resources",
           "provenance"]

def check_resume(cfg: PretrainConfig) -> Path | str | None:
    """The run's newest checkpoint, after checking it was made by the same model."""
    newest = latest_checkpoint(cfg.run.run_location)
    if newest is None:
        return None
    saved = saved_config(newest)  # a few kB: the weights stay where they are
    for key, value in saved["model"].items():
        if getattr(cfg.model, key) != value:
            raise ConfigError(
                f"model.{key}: run '{cfg.run.name}' in {cfg.run.storage_path} was trained with "
                f"model.{key}={value!r}, not {getattr(cfg.model, key)!r}; it would resume from "
                f"{storage.basename(str(newest))}. Use another --name, or the run's own model "
                "settings")
    return newest


def check_local_resources(cfg: PretrainConfig) -> None:
    """A local Ray instance would wait forever for resources this machine does not have."""
    w = cfg.workers
    if w.placement == "STRICT_SPREAD" and w.num_workers > 1:
        raise ConfigError(f"workers.placement: STRICT_SPREAD puts each of the {w.num_workers} "
                          "workers on its own node, and a local Ray instance is one node: use "
                          "PACK here, or run on a cluster (--address)")
    cpus = usable_cpus()
    if w.num_workers * w.cpus_per_worker > cpus:
        raise ConfigError(f"workers.num_workers: {w.num_workers} workers x {w.cpus_per_worker} "
                          f"CPUs need {w.num_workers * w.cpus_per_worker} CPUs, this machine has "
                          f"{cpus}: lower workers.num_workers or workers.cpus_per_worker")
    if w.use_gpu and torch.cuda.device_count() < w.num_workers:
        raise ConfigError(f"workers.use_gpu: {w.num_workers} GPU workers need {w.num_workers} "
                          f"GPUs, this machine has {torch.cuda.device_count()}: set "
                          "workers.use_gpu=false or lower workers.num_workers")


def provenance(cfg: PretrainConfig, address: str | None) -> dict:
    """What a result needs beside it: time, config, versions, git revision, hardware."""
    return {**record_provenance(), "address": address or "local", "config": cfg.to_dict()}


def record_launch(cfg: PretrainConfig, address: str | None) -> None:
    """One line per launch (first start and every resume) in the run's launches.jsonl."""
    storage.append_line(storage.join(cfg.run.run_location, "launches.jsonl"),
                        json.dumps(provenance(cfg, address)))


def _storage(run: RunSettings) -> dict:
    """RunConfig's storage arguments: a folder, or a URI's filesystem (with its options, such
    as an S3 endpoint) and path on it."""
    if not run.remote:
        return {"storage_path": run.storage_path}
    fs, path = storage.filesystem(run.storage_path)
    return {"storage_path": path, "storage_filesystem": fs}


class FFCVTrainer(TorchTrainer):
    """A TorchTrainer for workers that read FFCV files, not Ray Datasets: without Train's
    DatasetManager actor, one process per launch that Train V2 starts whether or not the
    trainer has `datasets` and that nothing here would ever ask for a shard. Its start (the
    imports of Ray Data and pyarrow) took 1.7-1.9 s of CPU on the 2-core EPYC, during the
    worker group's own start-up. With `datasets`, Train's callbacks are kept as they are."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets or DatasetsCallback is None:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def build_trainer(cfg: PretrainConfig, callbacks=(),
                  evaluate: EvalRequest | None = None) -> TorchTrainer:
    """The run's TorchTrainer: ScalingConfig from `workers`, RunConfig from `run`; with
    `evaluate`, the workers' last stage is that evaluation (harness.evaluation.remote)."""
    w = cfg.workers
    if evaluate is not None:
        clear_outcome(cfg.run.run_location)  # an earlier launch's is not this one's
    return FFCVTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(),
                           "evaluate": evaluate.to_dict() if evaluate else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=w.num_workers, use_gpu=w.use_gpu, placement_strategy=w.placement,
            resources_per_worker={"CPU": w.cpus_per_worker, **({"GPU": 1} if w.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, **_storage(cfg.run),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            # INFO would print every report of every rank with all its metrics; the
            # worker loop logs one summary line per epoch instead.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks)),
    )


def pretrain(cfg: PretrainConfig, address: str | None = None, *, check_data: bool = True,
             evaluate: EvalRequest | None = None) -> ray.train.Result:
    """Run (or resume) the pretraining run `cfg.run.name`; raises on a failed run.

    check_data=False: the caller has already checked cfg against its data set (load_config
    does, unless told not to), so it is not read again here. evaluate: the run's workers then
    evaluate its last checkpoint (read the records with harness.evaluation.remote.read_outcome).
    """
    if check_data:
        cfg.check_data()
    if cfg.run.remote:
        storage.check_uri(cfg.run.run_location)  # reachable and writable, before Ray starts
    check_resume(cfg)
    if address is None:
        check_local_resources(cfg)
    with ray_session(address):
        record_launch(cfg, address)
        return build_trainer(cfg, evaluate=evaluate).fit()
