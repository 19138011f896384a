"""Starting Ray the way this project needs it: our own local instance, on loopback only.

Import this module before anything imports `ray`: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
once, when `ray` is imported (ray_constants.ENABLE_RAY_CLUSTER). With it at 0 every Ray address
is 127.0.0.1; without it Ray binds the machine's external interface (measured on the
development machine), which a local run and the tests must never do.

`start_ray()` always starts a new local instance (address="local"): it never joins a Ray
instance that happens to be running, whatever RAY_ADDRESS says. `start_ray(address)` joins the
named cluster instead (`harness pretrain --address ray://head:10001` or `auto` on a cluster node).

Each local instance serves its dashboard, and with it Ray's state API, on a port of its own,
and its processes find that API through RAY_API_SERVER_ADDRESS: without it, the state API of a
machine that runs two local instances (two sweeps, a sweep beside the tests) fails with "Found
multiple active Ray instances", and Train V2 cannot see that a stopped trial's controller died.

A local start gets two tries: Ray waits a fixed 30 s for its raylet to register with the GCS,
which a slow, loaded 2-core machine can miss (seen here: "The current node timed out during
startup ... the GCS has become overloaded"). The processes of a failed try are killed before
the second, and a second failure says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402  (must follow the environment variable above)

__all__ = ["start_ray", "ray_session", "WORKER_ENV", "quiet_ray_train_logs", "RayStartError"]

START_ATTEMPTS = 2


class RayStartError(RuntimeError):
    """The local Ray instance did not start, twice; the message says what to do."""

# Environment of every Ray process the harness starts (driver-side defaults; an explicit
# environment variable wins).
WORKER_ENV = {
    # ray.train.report blocks every worker until the controller polls, every 2 s by default:
    # that is idle time on each report (one per epoch). 0.5 s costs the controller nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# Start-up waits of a local instance that Ray lets us set (its raylet wait is fixed at 30 s):
# the dashboard, which serves the state API Train V2 needs, gets 3 minutes instead of 1.
_LOCAL_START_ENV = {"RAY_DASHBOARD_STARTUP_TIMEOUT_S": "180"}


def _local_env() -> dict[str, str]:
    env = dict(WORKER_ENV)
    # Train's PreemptionWatcher (one more actor process per run, about 4 s of CPU to start)
    # polls for the spot-reclaim notices of cloud nodes; a local instance has none to watch.
    env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    if sys.platform.startswith("linux"):
        # gloo picks its interface from the hostname, which may resolve to an external address;
        # a local run has no reason to leave loopback.
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return {k: os.environ.get(k, v) for k, v in env.items()}


def start_ray(address: str | None = None, *, num_cpus: int | None = None,
              num_gpus: int | None = None, resources: dict[str, float] | None = None,
              log_to_driver: bool = True) -> bool:
    """Start (or join, with `address`) Ray for this process; True if this call started it.

    When Ray is already initialised in this process (a test module's instance, a sweep's
    driver), it is used as it is and False is returned: the caller then must not shut it down.
    """
    if ray.is_initialized():
        return False
    runtime_env = {"worker_process_setup_hook": f"{__name__}.quiet_ray_train_logs"}
    if address is None:
        # Set in this process before the local instance starts: raylet and workers inherit it.
        os.environ.update(_local_env())
        for key, value in _LOCAL_START_ENV.items():
            os.environ.setdefault(key, value)
        # The dashboard (on 127.0.0.1) serves Ray's state API, which Train V2's
        # PlacementGroupCleaner needs to see that a controller died: without it, a trial that
        # ASHA stops keeps its placement group, and its CPUs, for good (the next trial then
        # waits forever; seen here).
        _start_local(dict(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                          num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                          runtime_env=runtime_env, log_to_driver=log_to_driver))
    else:
        env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
        ray.init(address=address, runtime_env={**runtime_env, "env_vars": env},
                 log_to_driver=log_to_driver)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, **options) -> Iterator[bool]:
    """A command's Ray: started (or joined) on entry as `start_ray` does, shut down on exit if
    this call started it; yields whether it did. Nested sessions share the outer one."""
    started = start_ray(address, **options)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def _children() -> set[int]:
    import psutil  # a dependency of ray[default]

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill(pids: set[int]) -> None:
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_local(init_args: dict) -> None:
    """ray.init of a new local instance, tried twice; RayStartError after the second failure."""
    for attempt in range(1, START_ATTEMPTS + 1):
        before = _children()
        started = time.monotonic()
        port = _free_port()
        # In this process's environment before the start: the raylet and every worker (Train's
        # controller among them) inherit it.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        try:
            ray.init(**init_args, dashboard_port=port)
            return
        except (TypeError, ValueError):  # bad arguments: a retry cannot help
            raise
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception on a start time-out
            ray.shutdown()
            _kill(_children() - before)  # a half-started GCS or raylet must not linger
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if attempt < START_ATTEMPTS:
                logging.getLogger(__name__).warning(
                    "the local Ray instance did not start (%s, after %.0f s); trying again",
                    reason, time.monotonic() - started)
                continue
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            advice = (f"the machine is too busy for Ray's start-up waits (load average "
                      f"{load:.1f} on {os.cpu_count()} cores): let other work finish (another "
                      "sweep or test run, a stale Ray instance: `ps aux | grep raylet`), then "
                      "run the command again") if "timed out" in reason.lower() else \
                "fix what it names, then run the command again"
            raise RayStartError(f"the local Ray instance did not start in {START_ATTEMPTS} "
                                f"tries ({reason}): {advice}") from err


# Train V2's worker context module, below ray's package folder.
_TRAIN_CONTEXT = ("train", "v2", "_internal", "execution", "context.py")


def quiet_ray_train_logs() -> None:
    """Runs in every Ray worker process (runtime_env worker_process_setup_hook).

    While Ray's state API is unavailable (a cluster joined without its dashboard, or the
    dashboard still starting), Train V2's PlacementGroupCleaner warns that it cannot query the
    controller on every check, about once a second; it keeps going, and only that one message
    is dropped. And every worker logs each ray.train.report, all metrics included, at INFO
    through Ray's own handler, which RunConfig's LoggingConfig does not reach; the worker loop
    logs one summary line per epoch instead.
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner") \
        .addFilter(lambda record: "State API may be temporarily unavailable" not in
                   record.getMessage())
    # That module names its logger by its file path, outside the ray.train hierarchy. The name
    # is found without importing it: `ray.train` brings pandas, pyarrow and pydantic, about
    # 0.6 s of CPU in each process that needs none of them (Tune's report queue, one per
    # trial; idle and task workers).
    context = os.path.join(os.path.dirname(ray.__file__), *_TRAIN_CONTEXT)
    if os.path.isfile(context):  # another Ray layout: keep its logs rather than fail the worker
        logging.getLogger(context).addFilter(lambda record: record.levelno >= logging.WARNING)
