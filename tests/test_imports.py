"""What a process pays to import the harness: the driver side never imports ffcv.

Importing ffcv costs about 5 s of CPU (its typed-dict set-up under numba) in every process
that does it, 0.5 s through harness.ffcv_import. Only processes that build loaders need it: a
sweep's driver, Tune's trial actor, Train's controller and a CLI that rejects a config must not
pay even that, nor torchvision's 2 s.
"""

import json
import subprocess
import sys

DRIVER_MODULES = ("harness.cli", "harness.config", "harness.sweep.run", "harness.pretrain.driver",
                  "harness.pretrain.command",
                  "harness.pretrain.worker", "harness.evaluation.remote", "harness.evaluation.data",
                  "harness.results.report", "data_prep")


def _python(code: str) -> list[str]:
    """The stdout lines of `code` run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    return done.stdout.splitlines()


def test_the_driver_side_does_not_import_ffcv_and_the_loaders_still_resolve():
    code = (f"import sys; import {', '.join(DRIVER_MODULES)}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules}))); "
            "import harness.data as d, harness.evaluation as e, data_prep; "
            "print(d.two_view_loader.__module__, e.evaluate.__module__, "
            "data_prep.prepare.__module__)")
    driver_side, resolved = _python(code)
    loaded = set(driver_side.split())
    assert "harness" in loaded and "ray" in loaded
    assert "ffcv" not in loaded
    assert "torchvision" not in loaded  # about 2 s more: imported where a backbone is built
    # first use of a lazy name imports its module
    assert resolved.split() == ["harness.data.loaders", "harness.evaluation.runner",
                                "data_prep.convert"]


def _image_modes(first: str) -> dict:
    """In a fresh process that imports `first`, then ffcv: FFCV's table of image modes, its
    type, whether numba.typed.Dict is numba's own afterwards, and whether harness's finder is
    installed."""
    code = (f"import json, sys; import {first}; "
            "import ffcv.loader, ffcv.fields.rgb_image as r, numba.typed, numba.typed.typeddict "
            "as t; print(json.dumps({'modes': dict(r.IMAGE_MODES), "
            "'type': type(r.IMAGE_MODES).__name__, 'dict_restored': numba.typed.Dict is t.Dict, "
            "'harness_finder': any(type(f).__module__ == 'harness.ffcv_import' "
            "for f in sys.meta_path)}))")
    return json.loads(_python(code)[-1])


def test_ffcv_imported_through_harness_has_ffcvs_image_modes_and_numba_back():
    """harness.ffcv_import: the image-mode table as a plain dict with FFCV's own entries (read
    in a process that imported ffcv before harness, FFCV's typed dict), numba.typed.Dict put
    back for every other user, and the table FFCV's own when ffcv came first."""
    reference = _image_modes("numba")              # ffcv before harness: FFCV's own import
    quick = _image_modes("harness")
    assert reference["type"] == "Dict" and not reference["harness_finder"]
    assert quick["type"] == "dict" and quick["harness_finder"]
    assert quick["modes"] == reference["modes"] == {"jpg": 0, "raw": 1}
    assert quick["dict_restored"] and reference["dict_restored"]
    through_prep = _image_modes("data_prep")       # prep's writer imports ffcv itself
    assert through_prep["type"] == "dict" and through_prep["modes"] == reference["modes"]
