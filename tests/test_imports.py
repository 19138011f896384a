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


def test_the_driver_side_does_not_import_ffcv_and_the_loaders_still_resolve():
    code = (f"import sys; import {', '.join(DRIVER_MODULES)}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules}))); "
            "import harness.data as d, harness.evaluation as e, data_prep; "
            "print(d.two_view_loader.__module__, e.evaluate.__module__, "
            "data_prep.prepare.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    driver_side, resolved = done.stdout.splitlines()
    loaded = set(driver_side.split())
    assert "harness" in loaded and "ray" in loaded
    assert "ffcv" not in loaded
    # first use of a lazy name imports its module
    assert resolved.split() == ["harness.data.loaders", "harness.evaluation.runner",
                                "data_prep.convert"]
