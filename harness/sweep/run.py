"""`harness sweep CONFIG`: Ray Tune over pretraining configs, every trial evaluated.

    harness sweep experiments/sweep_cifar10_demo.yaml          # runs, or resumes, the sweep
    harness report runs/sweeps/cifar10_demo                     # tables, figures, TensorBoard

Each trial is a Ray Train run driven from Ray Tune the Train V2 way: Tune runs `run_trial`, a
function that builds the trial's TorchTrainer (harness.pretrain.driver.build_trainer) and
forwards its per-epoch metrics to Tune (TuneReportCallback), which ASHA compares when a
scheduler is set. After training, the trial's rank-0 worker evaluates its newest checkpoint in
its own process, on the CPUs or GPU the workers used (harness.evaluation.remote), and the trial
function writes trials/<id>/trial.json.

Trials share the machine by resources. Tune gives a trial function one CPU by default; on a
2-CPU machine two of them would hold both CPUs and their Train workers could never start. So
the trial function holds no CPU, leaving all of them to its workers, and on a local instance
one unit of a custom resource (`harness_trial_slot`, as many as the trials that fit at once)
limits how many trials start, so that a started trial finds CPUs for its workers. On a cluster,
Tune's max_concurrent_trials does that.

Resuming: the trial list is fixed by the sweep file (harness.sweep.config). Running the same
command again (or with --resume) skips trials whose record says ok, failed or stopped, and
re-runs the others, whose Train runs continue from their newest checkpoint. Failures are
results: a diverging loss (the worker loop stops at the first non-finite loss), a crash or an
evaluation error marks the trial failed with its reason, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from harness.ray_runtime import ray_session  # first: sets Ray's environment before `import ray`

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback  # noqa: E402

from harness.config import ConfigError, PretrainConfig  # noqa: E402
from harness.evaluation.remote import (EvalRequest, EvaluationError,  # noqa: E402
                                       evaluate_in_ray, read_outcome)
from harness.evaluation.settings import EvalSettings  # noqa: E402
from harness.pretrain.driver import (build_trainer, check_local_resources,  # noqa: E402
                                     record_launch)
from harness.provenance import record_provenance, usable_cpus  # noqa: E402
from harness.results.layout import (read_baselines, read_json,  # noqa: E402
                                    read_trials, train_from_metrics, write_baseline,
                                    write_sweep, write_trial)
from harness.pretrain.run_log import read_divergence, read_metrics  # noqa: E402
from harness.sweep.config import (SCHEDULER_METRICS, SweepConfig, check_trial_ids,  # noqa: E402
                                  load_sweep)
from harness.sweep.progress import SweepProgress  # noqa: E402
from harness.storage import download, download_records, exists, join, upload  # noqa: E402

__all__ = ["run_sweep", "sweep_command", "run_trial", "SLOT", "FINISHED"]

SLOT = "harness_trial_slot"
_TRIAL_MEMORY = 2**20  # bytes: a token, so that a trial's request on a cluster is not empty
FINISHED = ("ok", "failed", "stopped")


def _reason(err: BaseException) -> str:
    """The root cause of a failed run, in one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]


def run_trial(config: dict) -> None:
    """Tune's trainable: train one trial's config, evaluate it, record it."""
    spec = config["trial"]
    run_dir = Path(spec["run_dir"])
    cfg = PretrainConfig.from_dict(spec["config"])
    record = {"trial_id": spec["trial_id"], "params": spec["params"], "status": "running",
              "error": None, "train": {}, "evals": {}}
    _write_trial(run_dir, spec["storage_uri"], record)
    record_launch(cfg, spec["address"])
    run = cfg.run.run_location  # the trial's training run: a folder, or in the sweep's URI

    timing = {"started_unix": time.time()}

    def finish(status: str, error: str | None = None, evals: dict | None = None) -> None:
        metrics = read_metrics(run)
        timing["wall_s"] = time.perf_counter() - start
        record.update(status=status, error=error, evals=evals or {},
                      train=train_from_metrics(metrics) if metrics else {}, timing=timing)
        _write_trial(run_dir, spec["storage_uri"], record)

    from ray.tune.integration.ray_train import TuneReportCallback

    settings = EvalSettings.from_dict(spec["eval_settings"])
    request = EvalRequest.of(spec["protocols"], settings, spec["transfer"])
    start = time.perf_counter()
    try:
        # The trial's workers evaluate its last checkpoint after training (in the run's rank 0).
        build_trainer(cfg, callbacks=[TuneReportCallback()], evaluate=request).fit()
    except ray.train.TrainingFailedError as err:
        return finish("failed", _reason(err))
    finally:
        timing["fit_s"] = time.perf_counter() - start
    diverged = read_divergence(run)
    if diverged:
        return finish("failed", diverged)
    try:
        outcome = read_outcome(run)
    except EvaluationError as err:
        return finish("failed", f"evaluation: {err}")
    timing["eval_s"] = outcome["wall_s"]  # inside fit_s
    finish("ok", evals={r["name"]: r for r in outcome["records"]})


def _write_trial(run_dir: Path, storage_uri: str | None, record: dict) -> None:
    """trial.json in this node's copy of the sweep, and in its URI where it has one (the trial
    may run on any node; the driver reads it from there)."""
    write_trial(run_dir, record)
    if storage_uri:
        upload(run_dir, storage_uri, f"trials/{record['trial_id']}/trial.json")


class _Recorder(tune.Callback):
    """Driver side: trials that ended without writing their record (stopped by ASHA, killed)."""

    def __init__(self, run_dir: Path, storage_uri: str | None, progress: SweepProgress):
        self.run_dir, self.storage_uri, self.progress = run_dir, storage_uri, progress

    def _close(self, trial, status: str, error: str | None) -> None:
        spec = trial.config["trial"]
        part = f"trials/{spec['trial_id']}/trial.json"
        if self.storage_uri:  # the trial wrote its record on its own node, and to the URI
            download(self.storage_uri, self.run_dir, part)
        path = self.run_dir / part
        record = read_json(path) if path.is_file() else {"trial_id": spec["trial_id"],
                                                          "params": spec["params"]}
        if record.get("status") not in FINISHED:
            run = PretrainConfig.from_dict(spec["config"]).run.run_location
            metrics = read_metrics(run)
            record.update(status=status, error=error, evals={},
                          train=train_from_metrics(metrics) if metrics else {})
            _write_trial(self.run_dir, self.storage_uri, record)
        self.progress.finish(spec["trial_id"], record["status"], record.get("error"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Returned normally without a final record: the scheduler stopped it.
        self._close(trial, "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            error = trial.get_error()
        except Exception:  # noqa: BLE001 - the message is a courtesy; the status is what counts
            error = None
        lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
        self._close(trial, "failed", lines[-1][:500] if lines else "the trial's process died")


def _check_existing(sweep: SweepConfig, resume: bool) -> dict[str, str]:
    """{trial_id: status} of the trials already recorded; refuses another sweep's folder."""
    path = sweep.run_dir / "sweep.json"
    if not path.is_file():
        if resume:
            raise ConfigError(f"--resume: {sweep.run_dir} holds no sweep to resume; run without "
                              "--resume to start it")
        return {}
    before = read_json(path).get("trials", {})
    ours = sweep.describe()["trials"]
    if before != ours:
        raise ConfigError(f"{sweep.run_dir} holds sweep '{sweep.name}' with other trials (its "
                          "search space, seeds or samples differ from this file): give this one "
                          "another --name, or delete that folder to start over")
    return {t["trial_id"]: t["status"] for t in read_trials(sweep.run_dir)}


def _local_concurrency(sweep: SweepConfig) -> int:
    cpus = usable_cpus()
    w = sweep.trials[0].config.workers
    per_trial = w.num_workers * w.cpus_per_worker
    return max(1, min(sweep.max_concurrent_trials, cpus // per_trial))


def _trial_specs(sweep: SweepConfig, todo: list, address: str | None) -> list[dict]:
    return [{"trial_id": t.trial_id, "params": t.params, "config": t.config.to_dict(),
             "run_dir": str(sweep.run_dir), "storage_uri": sweep.storage_uri,
             "protocols": list(sweep.protocols),
             "transfer": list(sweep.transfer), "address": address,
             "eval_settings": dataclasses.asdict(sweep.eval_settings)}
            for t in todo]


def _tuner(sweep: SweepConfig, specs: list[dict], local: bool, concurrency: int,
           verbose: bool = False) -> tune.Tuner:
    # Trials that continue from a checkpoint: the epochs their metrics.jsonl already has.
    runs = {t.trial_id: t.config.run.run_location for t in sweep.trials}
    resumed = {s["trial_id"]: metrics[-1]["epoch"] for s in specs
               if (metrics := read_metrics(runs[s["trial_id"]]))}
    progress = SweepProgress({s["trial_id"]: (s["params"], s["config"]["epochs"]) for s in specs},
                             concurrency, resumed=resumed, redraw=not verbose)
    # The trial's own process only waits on Train and Tune: no CPU. Ray refuses an empty
    # request, so on a cluster it asks for a token of memory instead (any node has it); on a
    # local instance for one of its trial slots (max_concurrent_trials).
    resources = {"CPU": 0, **({SLOT: 1} if local else {"memory": _TRIAL_MEMORY})}
    scheduler = metric = mode = None
    if sweep.scheduler:
        from ray.tune.schedulers import ASHAScheduler

        metric = sweep.scheduler["metric"]
        mode = SCHEDULER_METRICS[metric]
        # A trial that reaches its last epoch goes on to its evaluation; ASHA only stops
        # trials at the rungs before it. stop_last_trials=False alone does not do that: Ray
        # puts a rung at max_t itself whenever max_t / grace_period is a power of the
        # reduction factor, and a trial stopped there has trained every epoch but is never
        # evaluated (seen: 2 epochs, grace 1, factor 2). With max_t one epoch short every rung
        # lies before the last epoch (the config keeps grace_period below it).
        scheduler = ASHAScheduler(time_attr="epoch",
                                  max_t=max(t.config.epochs for t in sweep.trials) - 1,
                                  grace_period=sweep.scheduler["grace_period"],
                                  reduction_factor=sweep.scheduler["reduction_factor"],
                                  stop_last_trials=False)
    return tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler,
                                    metric=metric, mode=mode,
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"]),
        # Tune's JSON and CSV logs only: its TensorBoard logger would add a second HParams
        # experiment to RUN_DIR (the report writes the sweep's own).
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep.run_dir / ".ray"),
                                  callbacks=[progress,
                                             _Recorder(sweep.run_dir, sweep.storage_uri,
                                                       progress),
                                             JsonLoggerCallback(),
                                             CSVLoggerCallback()], verbose=0,
                                  # A trial whose own process died (its node lost)
                                  # starts again and resumes from its checkpoints; a trial
                                  # that failed for a reason returns its record instead.
                                  failure_config=tune.FailureConfig(
                                      max_failures=max(t.config.run.max_failures
                                                       for t in sweep.trials))),
    )


def _baseline(sweep: SweepConfig, local: bool) -> None:
    """The random-init reference of every protocol, once per sweep, from the first ok trial.

    It runs after the trials: on a local instance the whole machine is free by then, so a CPU
    evaluation takes every CPU Ray has, not one trial's share."""
    if not sweep.baseline:
        return
    have = read_baselines(sweep.run_dir)
    trials = {t["trial_id"]: t for t in read_trials(sweep.run_dir)}
    for spec in sweep.trials:
        trial = trials.get(spec.trial_id)
        if trial and trial["status"] == "ok":
            if set(trial["evals"]) <= set(have):
                return
            cfg = spec.config
            workers = cfg.workers
            if local and not workers.use_gpu:
                cpus = max(1, min(usable_cpus(), int(ray.cluster_resources().get("CPU", 1))))
                workers = dataclasses.replace(workers, num_workers=1, cpus_per_worker=cpus)
            records = evaluate_in_ray(cfg.run.run_location, sweep.protocols, cfg.data.dir,
                                      transfer_dirs=sweep.transfer, settings=sweep.eval_settings,
                                      workers=workers, init="random")
            for record in records:
                write_baseline(sweep.run_dir, record)
            return


def _link_logs(run_dir: Path) -> None:
    """RUN_DIR/logs: Ray's log folder of this session (the workers' output, Ray's warnings),
    which stays off the console unless --verbose."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:  # joined a cluster through ray:// : its logs live on the head
        return
    link = run_dir / "logs"
    if link.is_symlink() or link.is_file():
        link.unlink()
    if not link.exists():
        link.symlink_to(Path(node.get_session_dir_path()) / "logs", target_is_directory=True)


def _selected(sweep: SweepConfig, only: list[str] | None) -> set[str]:
    """The trial ids --trials names (all of them without it); an unknown id is refused."""
    ids = [t.trial_id for t in sweep.trials]
    check_trial_ids(ids, only, sweep.path.name)
    return set(only or ids)


def run_sweep(sweep: SweepConfig, *, address: str | None = None, resume: bool = False,
              verbose: bool = False, only: list[str] | None = None) -> list[dict]:
    """Run the sweep's unfinished trials (of `only`, where given: a smoke run of one trial, or
    a sweep split over several clusters); returns every trial's record. verbose: the workers'
    output and Ray's own messages on the console too (else only in RUN_DIR/logs)."""
    selected = _selected(sweep, only)
    if sweep.storage_uri and not (sweep.run_dir / "sweep.json").is_file() and \
            exists(join(sweep.storage_uri, "sweep.json")):
        download_records(sweep.storage_uri, sweep.run_dir)  # checkpoints stay in the URI
        print(f"harness sweep: resuming from {sweep.storage_uri}", flush=True)
    done = {k: v for k, v in _check_existing(sweep, resume).items() if v in FINISHED}
    todo = [t for t in sweep.trials if t.trial_id not in done and t.trial_id in selected]
    local = address is None
    if local:
        for t in todo:
            check_local_resources(t.config)
    concurrency = _local_concurrency(sweep) if local else sweep.max_concurrent_trials
    left = len(sweep.trials) - len(done) - len(todo)
    print(f"harness sweep: '{sweep.name}' in {sweep.run_dir}: {len(sweep.trials)} trials, "
          f"{len(done)} already finished, {len(todo)} to run"
          + (f" ({left} left for later: --trials)" if left else "")
          + f", {concurrency} at a time", flush=True)
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    write_sweep(sweep.run_dir, {**sweep.describe(), "provenance": record_provenance()})
    if sweep.storage_uri:
        upload(sweep.run_dir, sweep.storage_uri, "sweep.json")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # see _tuner
    with ray_session(address, resources={SLOT: concurrency} if local else None,
                     log_to_driver=verbose):
        _link_logs(sweep.run_dir)
        if not verbose:
            print(f"harness sweep: the workers' output and Ray's messages go to "
                  f"{sweep.run_dir / 'logs'} (--verbose: here too)", flush=True)
        if not local:
            from harness.sweep.cluster_check import check_cluster

            w = sweep.trials[0].config.workers
            check_cluster(gpus_per_trial=w.num_workers if w.use_gpu else 0,
                          cpus_per_trial=w.num_workers * w.cpus_per_worker,
                          data_dirs=sorted({t.config.data.dir for t in sweep.trials}
                                           | set(sweep.transfer)),
                          storage_path=sweep.storage_uri or str(sweep.run_dir))
        if todo:
            _tuner(sweep, _trial_specs(sweep, todo, address), local, concurrency,
                   verbose).fit()
        _baseline(sweep, local)
    return read_trials(sweep.run_dir)


def sweep_command(args: argparse.Namespace) -> int:
    """`harness sweep FILE [FILE ...]`: each file a sweep of its own, one after another on one
    Ray instance (the whole ablation suite in one command). Every file, and the trials that
    will run, is checked before any trains; `--trials` names trials of every file."""
    paths = args.config  # one or more (nargs="+")
    if args.name and len(paths) > 1:
        raise ConfigError(f"--name {args.name}: names one sweep, but {len(paths)} files are "
                          "given (each keeps its own name); run them one at a time, or drop "
                          "--name")
    sweeps = [load_sweep(path, name=args.name, storage_path=args.storage,
                         overrides=args.set or [], eval_overrides=args.eval_set or [],
                         only=args.trials) for path in paths]
    twice = [d for d in {s.run_dir for s in sweeps} if sum(s.run_dir == d for s in sweeps) > 1]
    if twice:
        raise ConfigError(f"two of the files are one sweep in {twice[0]} (the same name): give "
                          "each file its own `name`")
    local = args.address is None
    slots = max(_local_concurrency(s) for s in sweeps) if local else None
    # One instance for all: each sweep's run_sweep joins it (harness.ray_runtime.ray_session).
    with ray_session(args.address, resources={SLOT: slots} if local else None,
                     log_to_driver=args.verbose):
        codes = []
        for sweep in sweeps:
            code = _one_sweep(sweep, args)
            if code == 130:
                return code
            codes.append(code)
    if len(sweeps) > 1:
        print("harness sweep: " + "; ".join(
            f"{s.name} {'ok' if c == 0 else 'no trial ok'}" for s, c in zip(sweeps, codes)))
    return max(codes)


def _one_sweep(sweep: SweepConfig, args: argparse.Namespace) -> int:
    from harness.results.report import load_report, text, write_report
    from harness.results.layout import report_dir

    start = time.perf_counter()
    try:
        trials = run_sweep(sweep, address=args.address, resume=args.resume,
                           verbose=args.verbose, only=args.trials)
    except KeyboardInterrupt:
        print(f"\nharness sweep: interrupted; run the same command again to resume "
              f"({sweep.run_dir})")
        return 130
    if sweep.storage_uri:  # the trials' training records, written from their nodes
        download_records(sweep.storage_uri, sweep.run_dir)
    report = load_report(sweep.run_dir)
    write_report(report, report_dir(sweep.run_dir))
    if sweep.storage_uri:
        upload(sweep.run_dir, sweep.storage_uri)
    print(text(report))
    counts = {s: sum(t["status"] == s for t in trials) for s in ("ok", "failed", "stopped")}
    print(f"harness sweep: done in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f". Results: {report_dir(sweep.run_dir)}"
          + (f" (mirrored to {sweep.storage_uri})" if sweep.storage_uri else "") + "; "
          f"TensorBoard: tensorboard --logdir {sweep.run_dir} --host 127.0.0.1")
    return 0 if counts["ok"] else 1
