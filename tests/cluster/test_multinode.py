"""A multi-node Ray cluster on this machine, with S3 as its only shared storage.

The cluster is real: a head (no CPUs: it schedules, it does not train) and two worker nodes,
each a raylet of its own on 127.0.0.1 with two CPUs. Each worker node runs in a mount namespace
of its own (node_process.py), so that it sees its own data folder at the path every node uses,
staged from the bucket with `harness stage` as cluster.yaml's set-up does; no node can read
another's. Each node also has its own working folder for the harness (BT_STORAGE_CACHE). The
one place they share is a bucket on moto's S3 server, on 127.0.0.1, which `harness pretrain
--storage s3://...` writes checkpoints, metrics.jsonl, TensorBoard, launch records and the
export to. The head serves Ray's dashboard on 127.0.0.1 (its address in
RAY_API_SERVER_ADDRESS), as cluster.yaml's head does, and keeps too little memory for a sweep
trial's own process, so that trials run on the worker nodes, as on a cluster of spot workers
only (a pretraining's Ray Train controller stays on the driver's node, the head); each worker
node has the memory for one trial's process. What is
simulated: the machines (the nodes share this one's CPUs, and its disk outside their data
folders) and the autoscaler (the test adds the replacement node). What is real: Ray's nodes
and their processes, the S3 protocol, the SIGKILL of a node's raylet.

- Node loss in pretraining: in a run of 2 workers on 2 nodes (STRICT_SPREAD), the node
  holding rank 0 vanishes mid-epoch (its raylet and the processes it started SIGKILLed); a
  replacement node joins; Ray Train restarts the worker group, which resumes from the newest
  checkpoint in S3 (the new rank 0's node has never seen the run) and ends with each epoch
  once.
- Neither placement nor that loss changes the math: the run takes the same per-step losses as
  2 workers on one node (a local instance, run at the same time) with nothing lost, same seed
  and data.
- `harness export` and `harness eval` read that run from its URI.
- A node that joined without the data set is named by the cluster check before any trial.
- Node loss in a sweep stored in S3, both cases in one loss: two trials run at once, each with
  a training worker on each node and its own process (Tune's trial actor) on one of them. The
  node that vanishes holds one trial's process (Tune starts that trial again and it resumes
  from its checkpoint) and only a training worker of the other (Ray Train resumes it inside
  the trial, which Tune never restarts). Every trial is evaluated once and reported once, and
  the records each trial wrote before the loss are kept as they were.

Why the dashboard: Ray Train frees the placement group of a run whose controller died through
a cleaner on the head that asks the dashboard's state API; without it the lost trial's CPUs on
the surviving node stay taken and its restart waits forever.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.ray_runtime import ray_session  # noqa: F401  (first: Ray's environment)
from harness.sweep.run import TRIAL_MEMORY  # noqa: E402

from moto_s3 import TEST_CREDENTIALS, free_port, moto_server, s3_uri  # noqa: E402
from processes import guard, kill_tree, run_tree  # noqa: E402

pytestmark = pytest.mark.slow

HARNESS = Path(sys.executable).parent / "harness"
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
STEPS_PER_EPOCH = 5       # 400 images less 40 for val, 64 a step (harness.data: drop_last)
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on loopback with an empty bucket `runs`; the credentials in the environment of
    this process and of everything it starts (the cluster's nodes, the commands)."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**TEST_CREDENTIALS, "GLOO_SOCKET_IFNAME": "lo",
                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
            mp.setenv(key, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        with moto_server() as endpoint:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1") \
                .create_bucket(Bucket="runs")
            yield endpoint


NODE_PROCESS = Path(__file__).with_name("node_process.py")


class _Cluster:
    """A head (ray.cluster_utils.Cluster, in this process) and worker nodes each in a process
    and a mount namespace of its own (node_process.py): every node sees its own data folder
    at one path, `data`, as nodes with local disks do, and keeps its working folder apart."""

    def __init__(self, root: Path, data_uri: str, *, dashboard_port: int):
        from ray.cluster_utils import Cluster

        self.root, self.data_uri = root, data_uri
        self.data = root / "data"     # the head's staged data; each worker's own over it
        self._stage(self.data)
        # Too little memory on the head for a sweep trial's process (harness.sweep.run asks
        # for a token of it): trial processes run on the worker nodes.
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "memory": 2**19, "node_ip_address": "127.0.0.1",
            "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "env_vars": {"BT_STORAGE_CACHE": str(root / "head")},
            # A reclaimed node is marked dead after 3 failed health checks a second apart,
            # not Ray's 5 three seconds apart: the tests wait ~3 s per loss, not ~15. A
            # check of a live node fails only when it stays unanswered for Ray's 10 s
            # timeout, so a busy node is not taken for dead.
            "_system_config": {"health_check_period_ms": 1000,
                               "health_check_failure_threshold": 3}})
        self.workers: dict[str, subprocess.Popen] = {}
        self.ids: dict[str, str] = {}

    def _stage(self, folder: Path) -> None:
        """What cluster.yaml's set-up runs on each node: the data sets from the bucket."""
        staged = run_tree([str(HARNESS), "stage", self.data_uri, "--to", str(folder)],
                          timeout=guard(20))
        assert staged.returncode == 0, staged.stdout

    def add(self, name: str, *, stage: bool = True) -> str:
        """A worker node with two CPUs, the memory for one sweep trial's process and folders
        of its own (data staged unless `stage` is False); its node id, once it is alive."""
        own = self.root / name
        (own / "data").mkdir(parents=True)
        if stage:
            self._stage(own / "data")
        script = (f"mount --bind {own / 'data'} {self.data} && exec {sys.executable} "
                  f"{NODE_PROCESS} {self.cluster.address} --num-cpus 2 "
                  f"--memory {3 * TRIAL_MEMORY // 2}")
        proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], text=True,
                                stdout=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, "BT_STORAGE_CACHE": str(own)})
        self.workers[name] = proc
        line = proc.stdout.readline().split()   # the node prints its id once it is up
        assert line[:1] == ["node"], f"node {name} did not start ({proc.wait()})"
        self.ids[name] = line[1]
        deadline = time.monotonic() + guard(10)
        while not any(n["NodeID"] == line[1] and n["Alive"]
                      for n in self.cluster.global_state.node_table()):
            assert time.monotonic() < deadline, f"node {name} did not join the head"
            time.sleep(0.2)
        return line[1]

    def reclaim(self, name: str) -> list[int]:
        """The node vanishes, as a spot reclaim takes a machine: SIGKILL its raylet and every
        process it started (the Ray Train workers there), then the rest of the node."""
        import psutil

        proc = self.workers.pop(name)
        (raylet,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if p.name() == "raylet"]
        doomed = [raylet, *raylet.children(recursive=True)]
        for p in doomed:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(doomed, timeout=10)
        kill_tree(proc)
        return [p.pid for p in doomed]

    def remove(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.terminate()              # the node stops its processes (node_process.py)
        proc.wait(timeout=guard(5))

    def shutdown(self) -> None:
        for name in list(self.workers):
            self.remove(name)
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(s3, cifar_prepared, tmp_path_factory):
    """A head and two worker nodes; the data set is in the bucket, staged on each node."""
    from harness.storage import join, upload

    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:    # as tests/loopback_sandbox.py: root and namespaces, checked
        pytest.skip(f"worker nodes need mount namespaces: unshare --mount failed here "
                    f"({probe.stderr.strip()}); run the tests as root on Linux")
    data_uri = s3_uri(s3, "runs", "data")
    upload(cifar_prepared, join(data_uri, cifar_prepared.name))
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        c = _Cluster(tmp_path_factory.mktemp("nodes"), data_uri, dashboard_port=port)
        try:
            c.add("node-a")
            c.add("node-b")
            yield c
        finally:
            c.shutdown()


@pytest.fixture(scope="module")
def data_dir(cluster, cifar_prepared) -> Path:
    """Where every node finds its own staged copy of the data set."""
    return cluster.data / cifar_prepared.name


def _args(data: Path, uri: str, name: str, *overrides: str) -> list[str]:
    settings = ["warmup_epochs=1", "batch_size=64", f"data.dir={data}", "data.subset=null",
                "data.resolution=16", "model.projector=128-128", "workers.num_workers=2",
                "run.log_every_steps=1", "run.checkpoint_every=1", "run.max_failures=2",
                *overrides]
    return [str(HARNESS), "pretrain", str(EXPERIMENTS / "cifar10_cpu.yaml"), "--name", name,
            "--storage", uri, *[x for s in settings for x in ("--set", s)]]


def _step_losses(uri: str, tmp: Path) -> dict[int, float]:
    """Per-step loss from the run's TensorBoard files, read from S3."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness import storage

    assert storage.download(uri, tmp, "tensorboard")
    acc = EventAccumulator(str(tmp / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("step/loss_total")}


def _listing(uri: str) -> set[str]:
    from pyarrow.fs import FileSelector

    from harness import storage

    fs, root = storage.filesystem(uri)
    return {i.path.removeprefix(root + "/") for i in
            fs.get_file_info(FileSelector(root, recursive=True))}


@pytest.fixture(scope="module")
def spread_run(cluster, s3, data_dir, tmp_path_factory) -> dict:
    """A 2-epoch run with one worker on each worker node. Once epoch 1 is checkpointed in S3
    and epoch 2 under way, the node holding rank 0 vanishes (its raylet and the processes it
    started SIGKILLed) and a replacement joins: Ray Train restarts the worker group, which
    resumes from the checkpoint in S3. Its URI, its output and what was lost, when; and the
    URI of the same run with both workers on one node (a local Ray instance of 2 CPUs, on
    its own: it shares no process or storage with the cluster but the bucket), run at the
    same time, so that its start-up overlaps the cluster run's waits."""
    from harness.storage import join

    uri = s3_uri(s3, "runs")
    run = join(uri, "spread")
    tmp = tmp_path_factory.mktemp("spread")
    packed = subprocess.Popen(_args(data_dir, uri, "packed", "epochs=2"), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True,
                              env={**os.environ, "BT_STORAGE_CACHE": str(tmp / "packed")})
    try:
        cmd = _args(data_dir, uri, "spread", "epochs=2", "workers.placement=STRICT_SPREAD") + \
            ["--address", cluster.cluster.address]
        out, rc, [(rank0, killed_at, killed)] = _run_with_losses(
            cluster, cmd, [((run,), _rank0_node(cluster, "spread"))], tmp, fast_machine_s=60)
        packed_out, _ = packed.communicate(timeout=guard(90))
    finally:
        kill_tree(packed)
    assert rc == 0, out[-4000:]
    assert packed.returncode == 0, packed_out[-3000:]
    return {"uri": run, "out": out, "rank0": rank0, "killed_at": killed_at, "killed": killed,
            "packed": join(uri, "packed")}


def test_placement_and_node_loss_do_not_change_the_math(spread_run, tmp_path):
    """The spread run, with its node loss and resume, takes the same per-step losses as the
    same run with both workers on one node and nothing lost: the placement does not change
    the math, and a resume from a checkpoint continues exactly (harness.pretrain.worker's
    _seed_epoch: an epoch's data does not depend on how the run got there)."""
    from harness.pretrain.run_log import read_metrics

    spread, packed_run = spread_run["uri"], spread_run["packed"]
    assert [m["workers/nodes"] for m in read_metrics(spread)] == [2, 2]
    assert [m["workers/nodes"] for m in read_metrics(packed_run)] == [1, 1]
    a = _step_losses(spread, tmp_path / "a")
    b = _step_losses(packed_run, tmp_path / "b")
    assert sorted(a) == list(range(1, 2 * STEPS_PER_EPOCH + 1)) == sorted(b)
    assert a == pytest.approx(b, rel=1e-5), {s: (a[s], b[s]) for s in a}
    assert a[1] != a[2]  # the losses move: equal because the math is, not because nothing ran

    # Everything the run made is in the bucket: the nodes share nothing else.
    files = _listing(spread)
    for expected in ("metrics.jsonl", "launches.jsonl", "export/backbone.pt",
                     "export/export.json", "checkpoint_epoch000002/state.pt",
                     "checkpoint_epoch000002/config.json"):
        assert expected in files, sorted(files)
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in files)


def test_node_loss_resumes_from_s3_with_each_epoch_once(spread_run, cluster):
    from harness.pretrain.run_log import read_metrics
    from harness.storage import join, read_text

    run, rank0 = spread_run["uri"], spread_run["rank0"]
    assert len(spread_run["killed"]) >= 2  # the raylet and at least the Train worker it ran
    assert "resuming spread at epoch 1, step 5" in spread_run["out"], spread_run["out"][-4000:]
    metrics = read_metrics(run)
    assert [(m["epoch"], m["step"]) for m in metrics] == \
        [(e, e * STEPS_PER_EPOCH) for e in (1, 2)]
    # Epoch 1's record is the first attempt's (kept, not trained again), epoch 2's came after.
    assert metrics[0]["time"] < spread_run["killed_at"] < metrics[1]["time"]
    # Rank 0 worked in its node's own folder, never the driver's or the head's. The new rank 0
    # worked on a node that had never seen the run (the replacement, or the survivor, which
    # held rank 1): it fetched epoch 1's record from S3 and went on from it.
    worked = _folders_with_run(cluster, "spread")
    assert rank0 in worked and "head" not in worked and "driver" not in worked, worked
    (new_rank0,) = worked - {rank0}
    assert [m["epoch"] for m in read_metrics(_run_copy(cluster, new_rank0, "spread"))] == [1, 2]
    launches = (read_text(join(run, "launches.jsonl")) or "").splitlines()
    assert len(launches) == 1  # one command: Ray Train restarted the worker group itself


def test_export_and_eval_read_the_run_from_s3(spread_run, cifar_prepared, tmp_path):
    """`harness export` and `harness eval` take the run's URI: only the part they need is
    fetched; eval's records go to the run's eval/ in the bucket."""
    from harness.storage import join, read_text

    run = spread_run["uri"]
    exported = run_tree([str(HARNESS), "export", run, "--out", str(tmp_path / "export")],
                        timeout=guard(20))
    assert exported.returncode == 0, exported.stdout
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert (info["epoch"], info["step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert info["checkpoint"] == join(run, "checkpoint_epoch000002")
    evaluated = run_tree([str(HARNESS), "eval", run, "--protocol", "knn", "--data",
                          str(cifar_prepared), "--no-baseline", "--set", "knn_k=5"],
                         timeout=guard(30))
    assert evaluated.returncode == 0, evaluated.stdout
    record = json.loads(read_text(join(run, "eval", "knn.json")))
    assert record["checkpoint"]["path"] == join(run, "checkpoint_epoch000002")
    assert 0 <= record["metrics"][f"val/{record['primary']}"] <= 1


def _sweep_file(tmp_path: Path, name: str, data_dir: Path, uri: str) -> Path:
    """A sweep of two trials of 3 epochs stored at `uri`, both at once, each trial's two
    workers on the two worker nodes (and its own process on one of them)."""
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "experiment": str(EXPERIMENTS / "cifar10_cpu.yaml"),
        "storage_path": uri,
        "set": {"data.dir": str(data_dir), "data.subset": None, "data.resolution": 16,
                "batch_size": 64, "epochs": 3, "warmup_epochs": 1,
                "model.projector": "128-128", "workers.num_workers": 2,
                "workers.placement": "STRICT_SPREAD", "run.checkpoint_every": 1,
                "run.max_failures": 2, "probe.enabled": False},
        "search": {"mode": "grid", "space": {"loss.lambd": [0.005, 0.01]}, "seeds": [0]},
        "evaluate": {"protocols": ["knn"], "baseline": False,
                     "settings": {"loader_workers": 1, "test_images": 50, "val_images": 50}},
        "resources": {"max_concurrent_trials": 2}, "metric": "knn/val/k200_top1"}))
    return path


def test_a_node_without_the_data_set_is_named_before_any_trial(cluster, s3, data_dir,
                                                                tmp_path):
    """Every node sees only its own data folder: a node that joined without `harness stage`
    lacks the data set the head and the other nodes have at the same path. The cluster check
    names that node, the data set and the command that stages it, before any trial starts."""
    bare = cluster.add("node-unstaged", stage=False)
    try:
        uri = s3_uri(s3, "runs", "unstaged")
        path = _sweep_file(tmp_path, "unstaged", data_dir, uri)
        done = run_tree([str(HARNESS), "sweep", str(path), "--address", cluster.cluster.address],
                        timeout=guard(30),
                        env={**os.environ, "BT_STORAGE_CACHE": str(tmp_path / "driver")})
    finally:
        cluster.remove("node-unstaged")
    assert done.returncode != 0, done.stdout[-3000:]
    problems = [line for line in done.stdout.splitlines() if line.lstrip().startswith("- ")]
    assert len(problems) == 1, done.stdout[-3000:]        # that node only: the others have it
    (problem,) = problems
    assert f"node 127.0.0.1 ({bare[:8]})" in problem, problem
    assert f"{data_dir} is not a prepared data set" in problem, problem
    assert f"harness stage s3://YOUR-BUCKET/barlow-harness/data --to {cluster.data} " \
        f"--only {data_dir.name}" in problem, problem
    assert not any(f.startswith("unstaged/trials") for f in _listing(uri)), _listing(uri)


def _run_with_losses(cluster: _Cluster, cmd: list[str], losses, tmp_path: Path, *,
                     fast_machine_s: float):
    """Run `cmd`, and for each (run URIs, node picker) of `losses` in turn: once each of those
    runs has checkpointed epoch 1 in S3 (Ray Train has registered it: its checkpoint manager's
    snapshot is written then) and the next epoch is under way, the node the picker names
    vanishes and a replacement with an empty folder joins, as the autoscaler's would. Returns
    the output, the exit code and, per loss, (the node, when it was lost, the pids killed)."""
    from harness.pretrain.run_log import read_metrics
    from harness.storage import exists, join

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env={**os.environ, "BT_STORAGE_CACHE": str(tmp_path / "driver")})
    lost = []
    try:
        for runs, pick in losses:
            _wait_for(f"epoch 1's checkpoint of {', '.join(runs)} in S3",
                      lambda: all(read_metrics(run) and exists(join(run, RAY_SNAPSHOT))
                                  for run in runs), guard(fast_machine_s), proc)
            node = pick()
            lost.append((node, time.time(), cluster.reclaim(node)))
            cluster.add(f"{node}-replacement")
        out, _ = proc.communicate(timeout=guard(2 * fast_machine_s))
    finally:
        kill_tree(proc)
    return out, proc.returncode, lost


def _rank0_node(cluster: _Cluster, name: str):
    """A picker: the node whose working folder holds a copy of run `name` (rank 0 is there)."""
    def pick() -> str:
        (node,) = _folders_with_run(cluster, name)
        return node
    return pick


def _wait_for(what, predicate, timeout: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def _run_copy(cluster: _Cluster, node: str, name: str) -> Path:
    """That node's working copy of the run (harness.storage.local_cache)."""
    (folder,) = (cluster.root / node / "runs").glob(f"{name}-*")
    return folder


def _folders_with_run(cluster: _Cluster, name: str) -> set[str]:
    """The nodes whose working folder holds a copy of run `name` (rank 0 worked there)."""
    return {p.parts[len(cluster.root.parts)]
            for p in cluster.root.glob(f"*/runs/{name}-*/metrics.jsonl")}


def _trial_processes(cluster: _Cluster) -> dict[str, int]:
    """Per worker node, how many sweep trial processes (Tune's trial actors) it runs."""
    import psutil

    return {name: sum("ImplicitFunc" in " ".join(p.cmdline())
                      for p in psutil.Process(proc.pid).children(recursive=True))
            for name, proc in cluster.workers.items()}


def test_sweep_in_s3_survives_node_losses_of_both_kinds(cluster, s3, data_dir, tmp_path):
    """A sweep stored in S3, two trials at once, each trial's two workers on the two worker
    nodes and its own process on one of them (each node has the memory for one). Once both
    have checkpointed epoch 1, one node vanishes: the trial whose process it held is started
    again by Tune and resumes from its checkpoint in S3; the other lost only a training
    worker, and Ray Train resumes it inside the trial. A replacement joins. Each trial ends
    with one evaluation record and each epoch once, the records from before the loss are kept
    as they were, and the report lists each trial once."""
    from harness.storage import join, read_text

    uri = s3_uri(s3, "runs", "sweeps")
    path = _sweep_file(tmp_path, "nodes", data_dir, uri)
    sweep = join(uri, "nodes")
    runs = {t: join(sweep, "trials", t, "pretrain") for t in ("t0000", "t0001")}
    before: dict[str, list[str]] = {}

    def node_of_one_trial_process() -> str:
        held = _trial_processes(cluster)
        assert sorted(held.values()) == [1, 1], held   # one trial's process on each node
        for trial, run in runs.items():                # what each trial wrote so far
            before[trial] = [read_text(join(run, f)) for f in ("metrics.jsonl",
                                                               "launches.jsonl")]
        return sorted(held)[0]

    out, rc, [(_, lost_at, killed)] = _run_with_losses(
        cluster, [str(HARNESS), "sweep", str(path), "--address", cluster.cluster.address],
        [(tuple(runs.values()), node_of_one_trial_process)], tmp_path, fast_machine_s=120)
    assert rc == 0, out[-5000:]
    # The raylet, a trial's process and the two trials' Train workers there, at least.
    assert len(killed) >= 4, killed
    launches = check_sweep_after_loss(sweep, runs, lost_at)
    # One trial launched twice: Tune restarted its lost process, which resumed from the S3
    # checkpoint. The other once: Ray Train replaced its lost worker inside the trial.
    assert sorted(launches.values()) == [1, 2], launches
    for trial, run in runs.items():   # what was written before the loss, as it was
        metrics, launched = before[trial]
        assert read_text(join(run, "metrics.jsonl")).startswith(metrics), trial
        assert read_text(join(run, "launches.jsonl")).startswith(launched), trial


def check_sweep_after_loss(sweep: str, runs: dict[str, str], lost_at: float) -> dict[str, int]:
    """Every trial of the sweep at `sweep` ended ok with one knn evaluation and trained each
    of its 3 epochs once, the first before the loss at `lost_at` and the last after; the
    report lists each trial once. The number of launches of each trial."""
    from harness.pretrain.run_log import read_metrics
    from harness.storage import join, read_text

    launches = {}
    for trial, run in runs.items():
        record = json.loads(read_text(join(sweep, "trials", trial, "trial.json")))
        assert record["status"] == "ok" and set(record["evals"]) == {"knn"}, record
        metrics = read_metrics(run)
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        assert metrics[0]["time"] < lost_at < metrics[-1]["time"], (trial, lost_at, metrics)
        launches[trial] = len(read_text(join(run, "launches.jsonl")).splitlines())
    table = read_text(join(sweep, "report", "results.md"))
    for trial in runs:  # one row each in the trials table (★: the best)
        assert len(re.findall(rf"^\| {trial}( ★)? \| ok \|", table, re.M)) == 1, table
    return launches
