"""Loader start-up benchmark: what a new FFCV loader costs before its first batch, by flip op.

Every process that builds an FFCV loader (each training worker, the online probe, every
evaluation) compiles the loader's pipeline with numba on its first batch. This measures that
cost for the same pipeline (random-resized crop decoder, horizontal flip p 0.5, ToTensor,
ToTorchImage; CIFAR-10 test split, 32 px, batch 256) with each flip operation:
  - ffcv: FFCV 1.0.2's RandomHorizontalFlip, generated and compiled per loader;
  - harness: harness.data.ffcv_flip.HorizontalFlip, a seeded op whose kernel numba caches on
    disk;
  - harness + reader: the same, with FFCV's sample reader from numba's disk cache too
    (harness.data.ffcv_reader, which every harness loader uses) instead of compiled per loader;
  - none: the decoder alone (what the flip adds is the difference).
It measures a short-lived loader compiled and uncompiled (harness.data.loaders.interpreted:
FFCV's pure-Python mode): the eval loader and the one-decode two-view loader (CIFAR views,
photometric ops in the pipeline), one FFCV thread, batch 200, from building the loader to the
end of its first pass over N images, then a second pass (no compile in it: the per-image cost
alone); the compile is the first pass less the second, and the crossover is the image count at
which the uncompiled loader's extra cost per image adds up to that compile.
It also measures what importing ffcv costs a process (torch imported before the clock starts),
FFCV's own import against the one harness.ffcv_import gives any process that imports harness
first. Each measurement is a fresh Python process (imports done before the clock starts), so nothing
compiled by an earlier loader is reused; the variants take turns round by round so that load on
the machine hits them alike. Round 0 starts from an empty numba cache (the first process on a
machine or in a fresh clone), later rounds from the cache round 0 left. Reported: CPU seconds
(user + system, all threads) and wall seconds from building the loader to its first batch,
the median over the warm rounds, and round 0 apart. Run from the repository root:

    .venv/bin/python benchmarks/loader_startup.py [--datasets ../shared/datasets] [--rounds 3]
"""

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from environment import load_average, machine, revision, versions

VARIANTS = ("ffcv", "harness", "harness + reader", "none")

# Runs in a fresh interpreter: argv[1] = .beton, argv[2] = variant. Prints one JSON line.
_CHILD = r"""
import json, resource, sys, time
import numpy as np
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage
from harness.data.ffcv_flip import HorizontalFlip

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

path, variant = sys.argv[1], sys.argv[2]
flip = {"ffcv": [RandomHorizontalFlip(0.5)], "harness": [HorizontalFlip(0.5, seed=0)],
        "harness + reader": [HorizontalFlip(0.5, seed=0)], "none": []}[variant]
if variant == "harness + reader":
    from harness.data.ffcv_reader import install
    install()
c0, t0 = cpu(), time.perf_counter()
loader = Loader(path, batch_size=256, num_workers=2, order=OrderOption.RANDOM,
                pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32))] + flip
                           + [ToTensor(), ToTorchImage()], "label": [IntDecoder()]})
batch = next(iter(loader))
print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - t0}), flush=True)
# Skip the interpreter's teardown: with FFCV's loader threads still up it was seen to abort
# (SIGABRT) after the measurement had been printed.
import os; os._exit(0)
"""


# argv[1] = "ffcv" (FFCV's own import) or "harness" (harness first). Prints one JSON line.
_IMPORT_CHILD = r"""
import json, resource, sys, time
import numpy, torch

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

c0, t0 = cpu(), time.perf_counter()
if sys.argv[1] == "harness":
    import harness
import ffcv.loader, ffcv.fields.rgb_image
print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - t0}))
"""
IMPORTS = ("ffcv", "harness")

# argv: .beton, kind (eval | two-view), mode (compiled | uncompiled), images. One JSON line.
_PASS_CHILD = r"""
import json, os, resource, sys, time
import numpy as np
import harness
from harness.data import CIFAR_VIEWS
from harness.data.loaders import eval_loader, two_view_loader

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

path, kind, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
passes = 1 if mode == "uncompiled" else None   # one pass: within INTERPRET_UP_TO
options = dict(batch_size=200, resolution=32, num_workers=1, indices=np.arange(n),
               distributed=False, passes=passes)
c0, t0 = cpu(), time.perf_counter()
if kind == "two-view":
    loader = two_view_loader(path, views=CIFAR_VIEWS, **options)
    assert loader.interpreted == (mode == "uncompiled")
    one_pass = loader.uint8_batches
else:
    loader = eval_loader(path, **options)
    one_pass = loader.__iter__
out = {}
for name in ("first", "second"):
    for _ in one_pass():
        pass
    out[name] = {"cpu": cpu() - c0, "wall": time.perf_counter() - t0}
    c0, t0 = cpu(), time.perf_counter()
print(json.dumps(out), flush=True)
os._exit(0)
"""
PASS_KINDS = ("eval", "two-view")
PASS_MODES = ("compiled", "uncompiled")
PASS_IMAGES = (1000, 10000)


def prepared_cifar(datasets: Path, work: Path) -> Path:
    """CIFAR-10's test split (10,000 images) through `harness prep`, raw pixels."""
    from data_prep import prepare

    folder = work / "cifar10"
    with tarfile.open(datasets / "cifar10" / "test.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    inner = [p for p in folder.iterdir() if p.is_dir()]
    source = inner[0] if len(inner) == 1 and not (folder / "test").is_dir() else folder
    out = work / "prepared"
    prepare(str(source), out, write_mode="raw", num_workers=os.cpu_count(), progress=False)
    return out / "test.beton"


def measure(beton: Path, variant: str, cache: Path) -> dict:
    return _child(_CHILD, [str(beton), variant], cache)


def _child(code: str, args: list[str], cache: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path,
                        default=os.environ.get("BT_DATASETS", repo.parent / "shared" / "datasets"))
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds after round 0")
    args = parser.parse_args()

    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="bt-loader-startup-"))
    try:
        beton = prepared_cifar(Path(args.datasets), work)
        cache = work / "numba-cache"  # empty: round 0 is a first process on a machine
        rounds = {v: [] for v in VARIANTS}
        imports = {v: [] for v in IMPORTS}
        passes = {key: [] for key in itertools.product(PASS_KINDS, PASS_IMAGES, PASS_MODES)}
        for r in range(args.rounds + 1):
            for variant in VARIANTS:
                rounds[variant].append(measure(beton, variant, cache))
            for variant in IMPORTS:
                imports[variant].append(_child(_IMPORT_CHILD, [variant], cache))
            for key in passes:  # the two modes of a loader and size back to back
                kind, images, mode = key
                passes[key].append(_child(_PASS_CHILD, [str(beton), kind, mode, str(images)],
                                          cache))
            print(f"round {r}: " + ", ".join(f"{v} {rounds[v][-1]['cpu']:.1f} s CPU"
                                              for v in VARIANTS), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nLoader start-up, build to first batch: random-resized crop 32 px + flip, batch 256, "
          f"2 FFCV threads; median of {args.rounds} warm rounds (round 0: empty numba cache)")
    print(f"machine: {machine()}; load average before {load_before}, after {load_average()}")
    print(f"versions: {versions()}; revision {revision()}\n")
    print("| flip op | CPU s | wall s | CPU s, round 0 | wall s, round 0 | CPU vs FFCV's flip |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(m["cpu"] for m in rounds["ffcv"][1:])
    for variant in VARIANTS:
        warm = rounds[variant][1:]
        cpu = statistics.median(m["cpu"] for m in warm)
        wall = statistics.median(m["wall"] for m in warm)
        first = rounds[variant][0]
        print(f"| {variant} | {cpu:.1f} | {wall:.1f} | {first['cpu']:.1f} | {first['wall']:.1f} "
              f"| {cpu / base:.2f} |")
    print(f"\nImporting ffcv (torch already imported), median of {args.rounds} warm rounds\n")
    print("| import | CPU s | wall s | CPU vs FFCV's own |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(m["cpu"] for m in imports["ffcv"][1:])
    for variant in IMPORTS:
        cpu = statistics.median(m["cpu"] for m in imports[variant][1:])
        wall = statistics.median(m["wall"] for m in imports[variant][1:])
        name = {"ffcv": "FFCV's own", "harness": "through harness.ffcv_import"}[variant]
        print(f"| {name} | {cpu:.1f} | {wall:.1f} | {cpu / base:.2f} |")
    print(f"\nA short-lived loader compiled and uncompiled (FFCV's pure-Python mode): build and "
          f"first pass, then a second pass; one FFCV thread, batch 200, 32 px; CPU seconds, "
          f"median of {args.rounds} warm rounds\n")
    print("| loader | images | compiled: build + pass | uncompiled: build + pass | uncompiled "
          "vs compiled | second pass, compiled | second pass, uncompiled | compile | crossover "
          "(images) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, images in itertools.product(PASS_KINDS, PASS_IMAGES):
        m = {mode: {part: statistics.median(r[part]["cpu"] for r in passes[kind, images, mode][1:])
                    for part in ("first", "second")} for mode in PASS_MODES}
        compiled, uncompiled = m["compiled"], m["uncompiled"]
        compile_s = compiled["first"] - compiled["second"]
        extra = (uncompiled["second"] - compiled["second"]) / images
        crossover = f"{compile_s / extra:,.0f}" if extra > 0 else "never"
        print(f"| {kind} | {images:,} | {compiled['first']:.2f} | {uncompiled['first']:.2f} | "
              f"{uncompiled['first'] / compiled['first']:.2f} | {compiled['second']:.2f} | "
              f"{uncompiled['second']:.2f} | {compile_s:.2f} | {crossover} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
