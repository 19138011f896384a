"""Node loss in a sweep, the other case: the node that holds a trial's own process (Tune's
trial actor, which drives the trial's Ray Train run) vanishes.

The cluster of test_multinode.py, with two changes: the head keeps too little memory for a
trial's process, so that trials run on the worker nodes as they would on a cluster of spot
workers only; and the head serves Ray's dashboard (on 127.0.0.1, its address in
RAY_API_SERVER_ADDRESS), as cluster.yaml's head does. Ray Train frees the placement group of a
run whose controller died through a cleaner on the head that asks the dashboard's state API;
without it the lost trial's CPUs on the surviving node stay taken and its restart waits forever.
"""

from __future__ import annotations

import psutil
import pytest

from moto_s3 import free_port, s3_uri
from test_multinode import (HARNESS, _Cluster, _run_with_losses, _sweep_file,  # noqa: F401
                            check_sweep_after_loss, s3, three_nodes)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(s3, cifar_prepared, tmp_path_factory):  # noqa: F811  (s3: the fixture)
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        with three_nodes(s3, cifar_prepared, tmp_path_factory.mktemp("nodes"),
                         head={"include_dashboard": True, "dashboard_host": "127.0.0.1",
                               "dashboard_port": port, "memory": 2**19},
                         worker_memory=None) as c:
            yield c


def _trial_node(cluster: _Cluster):
    """A picker: the worker node that runs the sweep's trial process."""
    def pick() -> str:
        found = [name for name, proc in cluster.workers.items()
                 if any("ImplicitFunc" in " ".join(p.cmdline())
                        for p in psutil.Process(proc.pid).children(recursive=True))]
        assert len(found) == 1, found
        return found[0]
    return pick


def test_sweep_survives_the_loss_of_the_node_holding_a_trial(cluster, s3, cifar_prepared,  # noqa: F811
                                                             tmp_path):
    from harness.storage import join

    uri = s3_uri(s3, "runs", "sweeps")
    path = _sweep_file(tmp_path, "driver", cluster.data / cifar_prepared.name, uri)
    sweep = join(uri, "driver")
    runs = {t: join(sweep, "trials", t, "pretrain") for t in ("t0000", "t0001")}
    out, rc, [(_, killed_at, killed)] = _run_with_losses(
        cluster, [str(HARNESS), "sweep", str(path), "--address", cluster.cluster.address],
        [(runs["t0000"], _trial_node(cluster))], tmp_path, fast_machine_s=120)
    assert rc == 0, out[-5000:]
    assert len(killed) >= 3      # the raylet, the trial's process, the Train worker there
    # t0000 launched twice: Tune restarted its lost process, which resumed from the S3
    # checkpoint; t0001 once, untouched.
    check_sweep_after_loss(sweep, runs, killed_at, launches={"t0000": 2, "t0001": 1})
