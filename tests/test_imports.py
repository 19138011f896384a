"""What a process pays to import the harness: the driver side never imports ffcv.

Importing ffcv costs about 5 s of CPU (its typed-dict set-up under numba) in every process
that does it. Only processes that build loaders need it: a sweep's driver, Tune's trial actor,
Train's controller and a CLI that rejects a config must not pay it.
"""

import subprocess
import sys

DRIVER_MODULES = ("harness.cli", "harness.config", "harness.sweep", "harness.pretrain",
                  "harness.train", "harness.evaluation.remote", "harness.evaluation.data",
                  "harness.report", "data_prep")


def _modules_after_import(*modules: str) -> set[str]:
    code = (f"import sys; import {', '.join(modules)}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    return set(done.stdout.split())


def test_the_driver_side_does_not_import_ffcv():
    loaded = _modules_after_import(*DRIVER_MODULES)
    assert "harness" in loaded and "ray" in loaded
    assert "ffcv" not in loaded


def test_the_loaders_still_resolve_through_the_packages():
    loaded = _modules_after_import("harness.data")
    assert "ffcv" not in loaded
    code = ("import harness.data as d, harness.evaluation as e, data_prep; "
            "print(d.two_view_loader.__module__, e.evaluate.__module__, data_prep.prepare.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.split() == ["harness.data.loaders", "harness.evaluation.runner",
                                   "data_prep.convert"]
