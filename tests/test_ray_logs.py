"""harness.ray_runtime.quiet_ray_train_logs, the hook that runs in every Ray worker process."""

import subprocess
import sys
import textwrap

from conftest import REPO


def test_hook_filters_train_context_logs_without_importing_ray_train():
    """The hook runs in every worker, Tune's report queue and idle workers included: importing
    `ray.train` there (pandas, pyarrow, pydantic) cost about 0.6 s of CPU each. It must still
    drop the INFO lines of Train's context logger, found by that module's own `__file__`."""
    script = textwrap.dedent("""
        import logging, sys
        from harness import ray_runtime
        ray_runtime.quiet_ray_train_logs()
        print("train imported by the hook:", "ray.train" in sys.modules)
        from ray.train.v2._internal.execution import context
        logger = logging.getLogger(context.__file__)
        info = logger.makeRecord(logger.name, logging.INFO, "x.py", 1, "Reported metrics", (),
                                 None)
        warning = logger.makeRecord(logger.name, logging.WARNING, "x.py", 1, "slow", (), None)
        print("info kept:", logger.filter(info), "warning kept:", bool(logger.filter(warning)))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train imported by the hook: False" in done.stdout
    assert "info kept: False warning kept: True" in done.stdout
