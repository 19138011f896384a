"""harness.ray_runtime: a local start that fails is tried once more, cleaned up, then explained."""

import logging
import subprocess

import pytest

from harness import ray_runtime  # first: Ray's environment before `import ray`

import ray  # noqa: E402

from processes import ray_processes  # noqa: E402

pytestmark = pytest.mark.slow  # both start real Ray processes


def test_failed_local_start_is_retried_once_then_says_what_to_do(caplog):
    before = ray_processes()
    # A real ray.init that cannot succeed: its session folder would lie under a regular file.
    args = dict(address="local", num_cpus=1, include_dashboard=False,
                _temp_dir="/etc/hostname/ray")
    with caplog.at_level(logging.WARNING, logger=ray_runtime.__name__), \
            pytest.raises(ray_runtime.RayStartError) as err:
        ray_runtime._start_local(args)
    message = str(err.value)
    assert f"did not start in {ray_runtime.START_ATTEMPTS} tries" in message
    assert "Not a directory" in message and "run the command again" in message
    assert sum("trying again" in r.getMessage() for r in caplog.records) == 1
    assert not ray.is_initialized()
    assert set(ray_processes()) <= set(before)


def test_two_local_instances_each_find_their_own_state_api():
    """A second local instance started on the machine later (another sweep, a test run) must
    not take over this one's state API, which Train V2 asks whether a trial's controller is
    alive before it frees the trial's resources."""
    import os
    import sys

    from ray.util.state import list_actors

    from processes import guard, kill_tree

    assert ray_runtime.start_ray(num_cpus=1)
    other = None
    try:
        @ray.remote
        class Mine:
            def api(self):
                return os.environ["RAY_API_SERVER_ADDRESS"]

        mine = Mine.options(name="bt_test_mine").remote()
        address = ray.get(mine.api.remote())
        assert address == os.environ["RAY_API_SERVER_ADDRESS"]  # the workers inherit it
        other = subprocess.Popen(
            [sys.executable, "-c", "from harness.ray_runtime import start_ray; "
             "start_ray(num_cpus=1); print('up', flush=True); import time; time.sleep(600)"],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert other.stdout.readline().strip() == "up"

        def mine_listed() -> bool:
            try:
                actors = list_actors(filters=[("name", "=", "bt_test_mine")], timeout=guard(5))
            except ConnectionError:  # "Found multiple active Ray instances"
                return False
            return [a.state for a in actors] == ["ALIVE"]

        assert mine_listed()
        # Without the variable, Ray's address lookup takes the newest instance: the other one.
        del os.environ["RAY_API_SERVER_ADDRESS"]
        try:
            assert not mine_listed()
        finally:
            os.environ["RAY_API_SERVER_ADDRESS"] = address
    finally:
        ray.shutdown()
        if other is not None:
            kill_tree(other)
