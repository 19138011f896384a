"""One Ray worker node in a process of its own: what ray.cluster_utils.Cluster.add_node does,
as a command, so that a test can start the node inside a mount namespace of its own.

    unshare -m sh -c 'mount --bind NODE/data DATA && exec python node_process.py GCS_ADDRESS \
        --num-cpus 1 --memory 524288'

`ray start` cannot do this on loopback: it turns 127.0.0.1 into the machine's external address
unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and with that variable at 0 (harness.ray_runtime:
every Ray address is 127.0.0.1) it refuses to start a worker node. Ray's own test cluster starts
its nodes through `ray._private.node.Node`, as this does. The node's raylet and the workers it
starts are this process's children, in its mount namespace: they see the node's own data
folder. Prints `node <id>` once the node is up; runs until killed (its reaper then stops the
node's processes).
"""

from __future__ import annotations

import argparse
import signal

from harness.ray_runtime import start_ray  # noqa: F401  (first: Ray's environment)

import ray  # noqa: E402
import ray._private.node  # noqa: E402
import ray._private.parameter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gcs_address")
    parser.add_argument("--num-cpus", type=int, default=1)
    parser.add_argument("--memory", type=int, default=None)
    args = parser.parse_args()
    # cluster_utils.Cluster.add_node's settings for a worker node.
    params = ray._private.parameter.RayParams(
        gcs_address=args.gcs_address, num_cpus=args.num_cpus, num_gpus=0,
        memory=args.memory, node_ip_address="127.0.0.1",
        object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
        include_log_monitor=False, node_manager_port=0)
    params.dashboard_agent_listen_port = None
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True,
                                  spawn_reaper=True)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    print(f"node {node.node_id}", flush=True)
    signal.sigwait(stop)              # then atexit: the node's processes are stopped


if __name__ == "__main__":
    main()
