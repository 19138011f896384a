"""`harness pretrain CONFIG`: one pretraining run from the command line, optionally evaluated
(`--eval`) as its last stage by the run's own rank 0 (the driver: harness.pretrain.driver)."""

from __future__ import annotations

import argparse
from pathlib import Path

import harness.ray_runtime  # noqa: F401  (first: sets Ray's environment before `import ray`)

import ray.train  # noqa: E402

from harness import storage  # noqa: E402
from harness.config import ConfigError, PretrainConfig, load_config  # noqa: E402
from harness.evaluation.remote import EvalRequest, EvaluationError, read_outcome  # noqa: E402
from harness.evaluation.settings import parse_protocols  # noqa: E402
from harness.pretrain.driver import pretrain  # noqa: E402
from harness.pretrain.run_log import read_divergence  # noqa: E402

__all__ = ["pretrain_command"]


def pretrain_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set or [], name=args.name, storage_path=args.storage)
    print(f"harness pretrain: run '{cfg.run.name}' in {cfg.run.run_location}: {cfg.model.arch}, "
          f"projector {cfg.model.projector}, batch {cfg.batch_size} over "
          f"{cfg.workers.num_workers} {'GPU' if cfg.workers.use_gpu else 'CPU'} worker(s), "
          f"{cfg.epochs} epochs")
    request = _eval_request(cfg, args) if args.eval else None  # checked before training
    try:
        # load_config has checked the data set
        result = pretrain(cfg, address=args.address, check_data=False, evaluate=request)
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
    if cfg.run.remote:  # this machine's copy of the record, for TensorBoard
        for part in ("metrics.jsonl", "tensorboard"):
            storage.download(location, cfg.run.run_dir, part)
    checkpoint = Path(result.checkpoint.path).name if result.checkpoint else None
    print(f"harness pretrain: done at epoch {m.get('epoch')}, step {m.get('step')}; "
          f"checkpoint {storage.join(location, checkpoint) if checkpoint else None}; "
          f"export {storage.join(location, 'export')}; "
          f"TensorBoard: tensorboard --logdir {cfg.run.run_dir / 'tensorboard'}")
    if request is not None:
        return _write_evaluation(cfg)
    return 0


def _eval_request(cfg: PretrainConfig, args: argparse.Namespace) -> EvalRequest:
    """What `--eval` asks the run's workers to evaluate, every input checked now: the run's
    checkpoint and a random-init backbone of its architecture."""
    from harness.evaluation.command import settings_from

    protocols = parse_protocols(args.eval)
    if "transfer" in protocols and not args.eval_transfer:
        raise ConfigError("--eval transfer: give the other data sets with --eval-transfer DIR")
    request = EvalRequest.of(protocols, settings_from(None, args.eval_set), args.eval_transfer,
                             init="both")
    request.check(cfg.data.dir, cfg.data.resolution)
    return request


def _write_evaluation(cfg: PretrainConfig) -> int:
    """The records the run's workers wrote, printed and written to the run's eval/."""
    from harness.evaluation.command import print_record, write_records

    try:
        records = read_outcome(cfg.run.run_location)["records"]
    except EvaluationError as err:
        print(f"harness pretrain: the run trained, but its evaluation failed: {err}")
        return 1
    for record in records:
        print_record(record)
    write_records(records, cfg.run.run_dir / "eval")
    if cfg.run.remote:
        storage.upload(cfg.run.run_dir, cfg.run.run_location, "eval")
    print(f"harness pretrain: {len(records)} evaluation records in "
          f"{storage.join(cfg.run.run_location, 'eval')}")
    return 0
