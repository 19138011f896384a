"""harness.ray_runtime: a local start that fails is tried once more, cleaned up, then explained."""

import logging

import pytest

from harness import ray_runtime  # first: Ray's environment before `import ray`

import ray  # noqa: E402

from processes import ray_processes  # noqa: E402


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
