"""Checking a Ray cluster before a sweep starts: resources, data on every node, shared storage.

    start_ray("auto")                        # connected to the cluster first
    check_cluster(gpus_per_trial=4, cpus_per_trial=32, data_dirs=[cfg.data.dir],
                  storage_path="s3://my-bucket/barlow-runs")

A sweep that starts on a cluster missing any of these fails late and far from the cause: Tune
waits forever for GPUs the cluster does not have, a trial scheduled on a node without the
staged `.beton` files dies after minutes of start-up, and a storage path that is not shared
loses checkpoints of trials on other nodes. Every problem found is reported at once, in one
ClusterError naming what to do.

Only the resources of the nodes alive now count: workers the autoscaler could still add do not
(`ray status` shows them pending; `min_workers` in cluster.yaml keeps GPU workers up).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from harness.ray_runtime import start_ray  # noqa: F401  (first: Ray's environment before `import ray`)

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

__all__ = ["ClusterError", "check_cluster"]

PROBE_TIMEOUT_S = 120        # a node that cannot run a zero-CPU task in this time is not usable


class ClusterError(ValueError):
    """The cluster cannot run the sweep; the message says what is missing and what to do."""


def check_cluster(*, gpus_per_trial: int, cpus_per_trial: int, data_dirs: list[str],
                  storage_path: str) -> None:
    """Raise ClusterError unless one trial fits the cluster, every alive node has every data
    folder, and every node can write to `storage_path` and see what the others wrote there."""
    problems = _resource_problems(gpus_per_trial, cpus_per_trial)
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    token = uuid.uuid4().hex[:12]
    # Two rounds: every node writes its own probe file, then every node looks for all of them,
    # so a node-local folder passed off as shared storage shows up on a multi-node cluster.
    written = _on_every_node(_write_probe, nodes, data_dirs, storage_path, token)
    problems += [p for found in written.values() for p in found]
    if not problems:
        seen = _on_every_node(_read_probes, nodes, storage_path, token, nodes)
        problems += [p for found in seen.values() for p in found]
    _on_every_node(_remove_probes, nodes, storage_path, token)
    if problems:
        raise ClusterError("the cluster cannot run this sweep:\n  - " + "\n  - ".join(problems))


def _resource_problems(gpus: int, cpus: int) -> list[str]:
    total = ray.cluster_resources()
    have_gpus, have_cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    problems = []
    if gpus > have_gpus:
        problems.append(
            f"one trial needs {gpus} GPUs, the cluster has {have_gpus} now: wait until the GPU "
            "workers have joined (`ray status`), raise min_workers of a GPU worker type in "
            "cluster.yaml and run `ray up` again, or lower workers.num_workers")
    if cpus > have_cpus:
        problems.append(
            f"one trial needs {cpus} CPUs, the cluster has {have_cpus} now: wait for the "
            "workers (`ray status`), or lower workers.cpus_per_worker / data.loader_workers")
    return problems


def _on_every_node(task, nodes: list[str], *args) -> dict[str, list[str]]:
    """Run `task(node_id, *args)` once on each node (hard affinity); node id -> problems."""
    refs = {node: _remote(task).options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote(node, *args)
            for node in nodes}
    try:
        return dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"the check did not finish on every node within {PROBE_TIMEOUT_S} s: "
                           "see `ray status` for nodes that are starting or unreachable") from None


def _remote(task):
    # Zero CPUs: the check must run even while a node's CPUs are all taken.
    return ray.remote(num_cpus=0, max_retries=0)(task)


def _write_probe(node: str, data_dirs: list[str], storage_path: str, token: str) -> list[str]:
    from data_prep import read_manifest

    problems = []
    for data_dir in data_dirs:
        try:
            read_manifest(data_dir)
        except ValueError as err:     # PrepError: no manifest, unreadable, files missing
            name = Path(data_dir).name
            problems.append(f"{_node_name(node)}: {err}. Stage '{name}' on every node: "
                            f"`harness stage s3://YOUR-BUCKET/barlow-harness/data --to "
                            f"{Path(data_dir).parent} --only {name}` (cluster.yaml runs "
                            "`harness stage` as each node is set up)")
    try:
        fs, folder = _probe_folder(storage_path, token)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{node}") as f:
            f.write(b"ok")
    except (OSError, ValueError) as err:
        problems.append(f"{_node_name(node)}: cannot write to storage {storage_path} ({err}): "
                        "use a path every node can write (the S3 bucket or shared file system "
                        "of cluster.yaml)")
    return problems


def _read_probes(node: str, storage_path: str, token: str, nodes: list[str]) -> list[str]:
    from pyarrow.fs import FileSelector

    try:
        fs, folder = _probe_folder(storage_path, token)
        found = {info.base_name for info in fs.get_file_info(FileSelector(folder))}
    except (OSError, ValueError) as err:
        return [f"{_node_name(node)}: cannot read storage {storage_path} ({err})"]
    missing = [n for n in nodes if n not in found]
    if missing:
        return [f"{_node_name(node)}: storage {storage_path} is not shared: files written "
                f"there by {len(missing)} other node(s) are not visible. Use the results "
                "bucket (--storage s3://YOUR-BUCKET/barlow-harness/sweeps) or a shared file "
                "system mounted at the same path on every node"]
    return []


def _remove_probes(node: str, storage_path: str, token: str) -> list[str]:
    try:
        fs, folder = _probe_folder(storage_path, token)
        fs.delete_dir_contents(folder, missing_dir_ok=True)
        fs.delete_dir(folder)
    except (OSError, ValueError):
        pass                          # already removed through another node
    return []


def _probe_folder(storage_path: str, token: str):
    """(pyarrow filesystem, probe folder in it) for a local path or a URI (s3://bucket/dir)."""
    from harness.storage import filesystem

    fs, root = filesystem(storage_path)
    return fs, f"{root.rstrip('/')}/.cluster-check-{token}"


def _node_name(node: str) -> str:
    return f"node {ray.util.get_node_ip_address()} ({node[:8]})"     # called on that node
