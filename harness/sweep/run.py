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
Tune's max_concurrent_trials does that. Without a scheduler, a trial whose function has returned
hands its process to the next trial (Tune's reuse_actors): one start of torch, Train and Tune
less per trial after the first ones.

Several sweep files in one command (`harness sweep experiments/ablations/*.yaml`) run on one
Ray instance, each with its own folder, records and report. Those without a scheduler that run
as many trials at a time share one Tune run (their trials named `<sweep>-<id>` there), so that
one file's last trials and the next one's first run side by side; sweeps whose random-init
baseline is the same evaluation share it (`_baseline`).

Resuming: the trial list is fixed by the sweep file (harness.sweep.config). Running the same
command again (or with --resume) skips trials whose record says ok, failed or stopped, and
re-runs the others, whose Train runs continue from their newest checkpoint. Failures are
results: a diverging loss (the worker loop stops at the first non-finite loss), a crash or an
evaluation error marks the trial failed with its reason, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

__all__ = ["run_sweeps", "sweep_command", "run_trial", "SLOT", "TRIAL_MEMORY", "FINISHED"]

SLOT = "harness_trial_slot"
TRIAL_MEMORY = 2**20  # bytes: a token, so that a trial's request on a cluster is not empty
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

    def __init__(self, progress: SweepProgress):
        self.progress = progress

    def _close(self, trial, status: str, error: str | None) -> None:
        spec = trial.config["trial"]
        run_dir, storage_uri = Path(spec["run_dir"]), spec["storage_uri"]
        part = f"trials/{spec['trial_id']}/trial.json"
        if storage_uri:  # the trial wrote its record on its own node, and to the URI
            download(storage_uri, run_dir, part)
        path = run_dir / part
        record = read_json(path) if path.is_file() else {"trial_id": spec["trial_id"],
                                                          "params": spec["params"]}
        if record.get("status") not in FINISHED:
            run = PretrainConfig.from_dict(spec["config"]).run.run_location
            metrics = read_metrics(run)
            record.update(status=status, error=error, evals={},
                          train=train_from_metrics(metrics) if metrics else {})
            _write_trial(run_dir, storage_uri, record)
        self.progress.finish(spec["name"], record["status"], record.get("error"))

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


def _trial_specs(sweep: SweepConfig, todo: list, address: str | None,
                 alone: bool = True) -> list[dict]:
    """What each trial's process gets. `name`: the trial's id, or beside other sweeps in one
    Tune run "<sweep name>-<id>" (Tune's trial names, folders and the console's labels)."""
    return [{"trial_id": t.trial_id, "name": t.trial_id if alone else f"{sweep.name}-{t.trial_id}",
             "params": t.params, "config": t.config.to_dict(),
             "run_dir": str(sweep.run_dir), "storage_uri": sweep.storage_uri,
             "protocols": list(sweep.protocols),
             "transfer": list(sweep.transfer), "address": address,
             "eval_settings": dataclasses.asdict(sweep.eval_settings)}
            for t in todo]


def _tuner(sweeps: list[SweepConfig], specs: list[dict], local: bool, concurrency: int,
           verbose: bool = False) -> tune.Tuner:
    """One Tune run over `specs`, the trials of one sweep or of several that share their
    concurrency and have no scheduler (a scheduler compares the trials of one sweep)."""
    # Trials that continue from a checkpoint: the epochs their metrics.jsonl already has.
    resumed = {s["name"]: metrics[-1]["epoch"] for s in specs
               if (metrics := read_metrics(PretrainConfig.from_dict(s["config"])
                                           .run.run_location))}
    progress = SweepProgress({s["name"]: (s["params"], s["config"]["epochs"]) for s in specs},
                             concurrency, resumed=resumed, redraw=not verbose)
    # The trial's own process only waits on Train and Tune: no CPU. Ray refuses an empty
    # request, so on a cluster it asks for a token of memory instead (any node has it); on a
    # local instance for one of its trial slots (max_concurrent_trials).
    resources = {"CPU": 0, **({SLOT: 1} if local else {"memory": TRIAL_MEMORY})}
    scheduler = metric = mode = None
    (sweep, *others) = sweeps
    if sweep.scheduler:
        assert not others, "a scheduler compares the trials of one sweep"
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
        # Without a scheduler a trial's process is kept for the next trial once its function
        # has returned: one process start less, with its imports of torch, Ray Train and Tune
        # (about 2.7 s of CPU on the 2-core EPYC). A scheduler stops trials inside Train's
        # fit(); those sweeps keep one process per trial, as tested before.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler,
                                    metric=metric, mode=mode, reuse_actors=scheduler is None,
                                    trial_dirname_creator=lambda t: t.config["trial"]["name"],
                                    trial_name_creator=lambda t: t.config["trial"]["name"]),
        # Tune's JSON and CSV logs only: its TensorBoard logger would add a second HParams
        # experiment to RUN_DIR (the report writes the sweep's own). Several sweeps in one
        # run: in the first one's folder.
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep.run_dir / ".ray"),
                                  callbacks=[progress, _Recorder(progress),
                                             JsonLoggerCallback(),
                                             CSVLoggerCallback()], verbose=0,
                                  # A trial whose own process died (its node lost)
                                  # starts again and resumes from its checkpoints; a trial
                                  # that failed for a reason returns its record instead.
                                  failure_config=tune.FailureConfig(
                                      max_failures=max(t.config.run.max_failures
                                                       for s in sweeps for t in s.trials))),
    )


def _baseline(sweep: SweepConfig, local: bool, evaluated: dict[str, tuple[str, list]]) -> None:
    """The random-init reference of every protocol, once per sweep, from the first ok trial.

    It runs after the trials: on a local instance the whole machine is free by then, so a CPU
    evaluation takes every CPU Ray has, not one trial's share. `evaluated`: {key: (sweep name,
    records)} of the baselines this command has run. A sweep whose baseline is the same
    evaluation of the same random backbone as one of those (one architecture, stem,
    resolution, data set, protocols and evaluation settings, their seed included: the
    ablation files) gets a copy of its records, marked with the sweep that ran them."""
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
            request = EvalRequest.of(sweep.protocols, sweep.eval_settings, sweep.transfer,
                                     "random")
            key = json.dumps({"arch": cfg.model.arch, "stem": cfg.model.small_image_stem,
                              "resolution": cfg.data.resolution, "data": str(cfg.data.dir),
                              "request": request.to_dict(),
                              "device": [workers.use_gpu, workers.cpus_per_worker]},
                             sort_keys=True, default=str)
            if key in evaluated:
                name, records = evaluated[key]
                records = [{**r, "evaluated_for": name} for r in records]
            else:
                records = evaluate_in_ray(cfg.run.run_location, sweep.protocols, cfg.data.dir,
                                          transfer_dirs=sweep.transfer,
                                          settings=sweep.eval_settings, workers=workers,
                                          init="random")
                evaluated[key] = (sweep.name, records)
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


def _todo(sweep: SweepConfig, *, local: bool, resume: bool,
          only: list[str] | None) -> tuple[list, dict]:
    """The sweep's trials still to run (of `only`, where given), checked, and {trial_id:
    status} of those already finished; fetches the records of a sweep stored at a URI that
    this machine has not seen (a resume from the URI alone). Writes nothing of the sweep."""
    selected = _selected(sweep, only)
    if sweep.storage_uri and not (sweep.run_dir / "sweep.json").is_file() and \
            exists(join(sweep.storage_uri, "sweep.json")):
        download_records(sweep.storage_uri, sweep.run_dir)  # checkpoints stay in the URI
        print(f"harness sweep: resuming from {sweep.storage_uri}", flush=True)
    done = {k: v for k, v in _check_existing(sweep, resume).items() if v in FINISHED}
    todo = [t for t in sweep.trials if t.trial_id not in done and t.trial_id in selected]
    if local:
        for t in todo:
            check_local_resources(t.config)
    return todo, done


def _start(sweep: SweepConfig, todo: list, done: dict, concurrency: int) -> None:
    left = len(sweep.trials) - len(done) - len(todo)
    print(f"harness sweep: '{sweep.name}' in {sweep.run_dir}: {len(sweep.trials)} trials, "
          f"{len(done)} already finished, {len(todo)} to run"
          + (f" ({left} left for later: --trials)" if left else "")
          + f", {concurrency} at a time", flush=True)
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    write_sweep(sweep.run_dir, {**sweep.describe(), "provenance": record_provenance()})
    if sweep.storage_uri:
        upload(sweep.run_dir, sweep.storage_uri, "sweep.json")


def _tune_runs(sweeps: list[SweepConfig], todo: list[list],
               concurrency: list[int]) -> list[list[int]]:
    """Which sweeps share a Tune run (indices into `sweeps`): all of those without a scheduler
    that run as many trials at a time, so that one sweep's last trials and the next one's first
    run side by side; each sweep with a scheduler on its own. In the order of the files."""
    runs: list[list[int]] = []
    shared: dict[int, list[int]] = {}
    for i, sweep in enumerate(sweeps):
        if not todo[i]:
            continue
        if sweep.scheduler:
            runs.append([i])
        elif concurrency[i] in shared:
            shared[concurrency[i]].append(i)
        else:
            shared[concurrency[i]] = [i]
            runs.append(shared[concurrency[i]])
    return runs


def run_sweeps(sweeps: list[SweepConfig], *, address: str | None = None, resume: bool = False,
               verbose: bool = False, only: list[str] | None = None) -> list[list[dict]]:
    """Run the unfinished trials of every sweep (of `only`, where given: a smoke run of one
    trial, or a sweep split over several clusters) on one Ray instance; returns each sweep's
    trial records. Every sweep is checked, and on a cluster the cluster too, before any trial
    starts. verbose: the workers' output and Ray's own messages on the console too (else only
    in RUN_DIR/logs)."""
    local = address is None
    concurrency = [_local_concurrency(s) if local else s.max_concurrent_trials for s in sweeps]
    todo, done = zip(*(_todo(s, local=local, resume=resume, only=only) for s in sweeps))
    for sweep, *part in zip(sweeps, todo, done, concurrency):  # all checked: now write
        _start(sweep, *part)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # see _tuner
    with ray_session(address, resources={SLOT: max(concurrency)} if local else None,
                     log_to_driver=verbose):
        for sweep in sweeps:
            _link_logs(sweep.run_dir)
        if not verbose:
            print(f"harness sweep: the workers' output and Ray's messages go to "
                  f"{sweeps[0].run_dir / 'logs'}"
                  + (", linked from each sweep's folder" if len(sweeps) > 1 else "")
                  + " (--verbose: here too)", flush=True)
        if not local:
            from harness.sweep.cluster_check import check_cluster

            for sweep in sweeps:
                w = sweep.trials[0].config.workers
                check_cluster(gpus_per_trial=w.num_workers if w.use_gpu else 0,
                              cpus_per_trial=w.num_workers * w.cpus_per_worker,
                              data_dirs=sorted({t.config.data.dir for t in sweep.trials}
                                               | set(sweep.transfer)),
                              storage_path=sweep.storage_uri or str(sweep.run_dir))
        for run in _tune_runs(sweeps, todo, concurrency):
            specs = [spec for i in run
                     for spec in _trial_specs(sweeps[i], todo[i], address, len(run) == 1)]
            _tuner([sweeps[i] for i in run], specs, local, concurrency[run[0]], verbose).fit()
        evaluated: dict[str, tuple[str, list]] = {}
        for sweep in sweeps:
            _baseline(sweep, local, evaluated)
    return [read_trials(s.run_dir) for s in sweeps]


def sweep_command(args: argparse.Namespace) -> int:
    """`harness sweep FILE [FILE ...]`: each file a sweep of its own, all on one Ray instance
    (the whole ablation suite in one command), each with its own folder and report. Every
    file, and the trials that will run, is checked before any trains; `--trials` names trials
    of every file. Files without a scheduler share one Tune run (run_sweeps)."""
    from harness.results.report import load_report, text, write_report
    from harness.results.layout import report_dir

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
    start = time.perf_counter()
    try:
        results = run_sweeps(sweeps, address=args.address, resume=args.resume,
                             verbose=args.verbose, only=args.trials)
    except KeyboardInterrupt:
        print(f"\nharness sweep: interrupted; run the same command again to resume "
              f"({', '.join(str(s.run_dir) for s in sweeps)})")
        return 130
    codes = []
    for sweep, trials in zip(sweeps, results):
        if sweep.storage_uri:  # the trials' training records, written from their nodes
            download_records(sweep.storage_uri, sweep.run_dir)
        report = load_report(sweep.run_dir)
        write_report(report, report_dir(sweep.run_dir))
        if sweep.storage_uri:
            upload(sweep.run_dir, sweep.storage_uri)
        print(text(report))
        counts = {s: sum(t["status"] == s for t in trials) for s in ("ok", "failed", "stopped")}
        print(f"harness sweep: '{sweep.name}' done, {time.perf_counter() - start:.0f} s after "
              "the command started: "
              + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
              + f". Results: {report_dir(sweep.run_dir)}"
              + (f" (mirrored to {sweep.storage_uri})" if sweep.storage_uri else "") + "; "
              f"TensorBoard: tensorboard --logdir {sweep.run_dir} --host 127.0.0.1")
        codes.append(0 if counts["ok"] else 1)
    if len(sweeps) > 1:
        print("harness sweep: " + "; ".join(
            f"{s.name} {'ok' if c == 0 else 'no trial ok'}" for s, c in zip(sweeps, codes)))
    return max(codes)
