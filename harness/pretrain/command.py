"""`harness pretrain CONFIG`: one pretraining run from the command line, optionally evaluated
(`--eval`) as its last stage in the same Ray session (the driver: harness.pretrain.driver)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from harness.ray_runtime import ray_session  # first: sets Ray's environment before `import ray`

import ray.train  # noqa: E402

from harness import storage  # noqa: E402
from harness.config import ConfigError, PretrainConfig, load_config  # noqa: E402
from harness.pretrain.driver import pretrain  # noqa: E402
from harness.pretrain.run_log import read_divergence  # noqa: E402

__all__ = ["pretrain_command"]


def pretrain_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set or [], name=args.name, storage_path=args.storage)
    print(f"harness pretrain: run '{cfg.run.name}' in {cfg.run.run_location}: {cfg.model.arch}, "
          f"projector {cfg.model.projector}, batch {cfg.batch_size} over "
          f"{cfg.workers.num_workers} {'GPU' if cfg.workers.use_gpu else 'CPU'} worker(s), "
          f"{cfg.epochs} epochs")
    evaluation = _eval_plan(cfg, args) if args.eval else None  # checked before training
    # With --eval, one Ray session for the training and the evaluation after it.
    with ray_session(args.address) if evaluation else contextlib.nullcontext():
        try:
            result = pretrain(cfg, address=args.address, check_data=False)  # load_config did
        except ray.train.TrainingFailedError as err:
            print(f"harness pretrain: the run failed: {err}")
            return 1
        diverged = read_divergence(cfg.run.run_location)
        if diverged:
            print(f"harness pretrain: the run failed: {diverged}; lower the learning rate or "
                  "check the data")
            return 1
        m = result.metrics or {}
        location = cfg.run.run_location
        if cfg.run.remote:  # this machine's copy of the record, for TensorBoard (--eval reads S3)
            for part in ("metrics.jsonl", "tensorboard"):
                storage.download(location, cfg.run.run_dir, part)
        checkpoint = Path(result.checkpoint.path).name if result.checkpoint else None
        print(f"harness pretrain: done at epoch {m.get('epoch')}, step {m.get('step')}; "
              f"checkpoint {storage.join(location, checkpoint) if checkpoint else None}; "
              f"export {storage.join(location, 'export')}; "
              f"TensorBoard: tensorboard --logdir {cfg.run.run_dir / 'tensorboard'}")
        if evaluation:
            _evaluate_run(cfg, args, *evaluation)
        return 0


def _eval_plan(cfg: PretrainConfig, args: argparse.Namespace):
    """(protocols, settings) of `--eval`, with the data set checked against them now."""
    from harness.evaluation.command import settings_from
    from harness.evaluation.data import EvalData
    from harness.evaluation.settings import parse_protocols

    protocols = parse_protocols(args.eval)
    settings = settings_from(None, args.eval_set)
    data = EvalData.open(cfg.data.dir, settings, settings.resolution or cfg.data.resolution)
    if "semi" in protocols:
        for subset in settings.semi_subset_names():
            data.subset_indices(subset)
    if "transfer" in protocols and not args.eval_transfer:
        raise ConfigError("--eval transfer: give the other data sets with --eval-transfer DIR")
    return protocols, settings


def _evaluate_run(cfg: PretrainConfig, args: argparse.Namespace, protocols, settings) -> None:
    from harness.evaluation.command import print_record, write_records
    from harness.evaluation.remote import evaluate_in_ray

    records = evaluate_in_ray(cfg.run.run_location, protocols, cfg.data.dir,
                              transfer_dirs=args.eval_transfer, settings=settings,
                              workers=cfg.workers, init="both")
    for record in records:
        print_record(record)
    write_records(records, cfg.run.run_dir / "eval")
    if cfg.run.remote:
        storage.upload(cfg.run.run_dir, cfg.run.run_location, "eval")
    print(f"harness pretrain: {len(records)} evaluation records in "
          f"{storage.join(cfg.run.run_location, 'eval')}")
