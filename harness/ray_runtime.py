"""Starting Ray the way this project needs it: our own local instance, on loopback only.

Import this module before anything imports `ray`: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
once, when `ray` is imported (ray_constants.ENABLE_RAY_CLUSTER). With it at 0 every Ray address
is 127.0.0.1; without it Ray binds the machine's external interface (measured on the
development machine), which a local run and the tests must never do.

`start_ray()` always starts a new local instance (address="local"): it never joins a Ray
instance that happens to be running, whatever RAY_ADDRESS says. `start_ray(address)` joins the
named cluster instead (`harness pretrain --address ray://head:10001` or `auto` on a cluster node).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402  (must follow the environment variable above)

__all__ = ["start_ray", "WORKER_ENV", "quiet_ray_train_logs"]

# Environment of every Ray process the harness starts (driver-side defaults; an explicit
# environment variable wins).
WORKER_ENV = {
    # ray.train.report blocks every worker until the controller polls, every 2 s by default:
    # that is idle time on each report (one per epoch). 0.5 s costs the controller nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def _local_env() -> dict[str, str]:
    env = dict(WORKER_ENV)
    if sys.platform.startswith("linux"):
        # gloo picks its interface from the hostname, which may resolve to an external address;
        # a local run has no reason to leave loopback.
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return {k: os.environ.get(k, v) for k, v in env.items()}


def start_ray(address: str | None = None, *, num_cpus: int | None = None,
              num_gpus: int | None = None, resources: dict[str, float] | None = None) -> bool:
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
        # The dashboard (on 127.0.0.1) serves Ray's state API, which Train V2's
        # PlacementGroupCleaner needs to see that a controller died: without it, a trial that
        # ASHA stops keeps its placement group, and its CPUs, for good (the next trial then
        # waits forever; seen here).
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 num_cpus=num_cpus,
                 num_gpus=num_gpus, resources=resources, runtime_env=runtime_env)
    else:
        env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
        ray.init(address=address, runtime_env={**runtime_env, "env_vars": env})
    return True


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
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logs rather than fail the worker
        return
    # That module names its logger by its file path, outside the ray.train hierarchy.
    logging.getLogger(context.__file__).addFilter(lambda record: record.levelno >= logging.WARNING)
