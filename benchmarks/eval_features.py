"""Evaluation feature extraction: one loader per part against one loader per .beton file.

Every linear or kNN evaluation extracts backbone features of three parts: train (less its
validation list), the validation list carved from train, and test. Extracted one loader per
part (`extract_features` for each, as the evaluation did), FFCV compiles the same pipeline three
times; with `extract_parts` the two parts of train.beton share one loader and one compile.
Both variants extract the same parts (the demo sweep's evaluation sizes by default: 1,000
train, the whole validation list, 1,000 test) with a random-init backbone of the demo recipe,
one torch thread and one FFCV thread (a sweep trial's evaluation on one CPU), each measurement
a fresh Python process (imports done before the clock starts), the variants taking turns round
by round. Reported: CPU seconds (user + system, all threads) and wall seconds of the
extraction, the median over the rounds. Run from the repository root, on a `harness prep`
folder of CIFAR-10 (the main job's, or any):

    .venv/bin/python benchmarks/eval_features.py --data runs/main/data/cifar10 [--rounds 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from environment import load_average, machine, revision, versions

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("per part", "per file")

# Runs in a fresh interpreter: argv[1] = data dir, argv[2] = variant, argv[3] = train images.
_CHILD = r"""
import json, resource, sys, time
import torch
from harness.evaluation import EvalSettings
from harness.evaluation.data import EvalData
from harness.evaluation.features import extract_features, extract_parts
from harness.model import BarlowTwins

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

torch.set_num_threads(1)
torch.manual_seed(0)
module = BarlowTwins.from_arch("resnet18", "512-512", small_image_stem=False).backbone.eval()
data = EvalData.open(sys.argv[1], EvalSettings(train_images=int(sys.argv[3])), 32)
parts = [data.part(role) for role in ("train", "val", "test")]
kw = dict(resolution=32, batch_size=256, device=torch.device("cpu"), num_workers=1)
c0, t0 = cpu(), time.perf_counter()
if sys.argv[2] == "per part":
    out = {p.role: extract_features(module, p.path, indices=p.indices, **kw) for p in parts}
else:
    out = extract_parts(module, parts, **kw)
print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - t0,
                  "images": sum(len(y) for _, y in out.values())}), flush=True)
import os; os._exit(0)  # skip the teardown with FFCV's threads up (see loader_startup.py)
"""


def _measure(data: str, variant: str, train_images: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, data, variant, str(train_images)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "runs" / "main" / "data" / "cifar10"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=1000)
    args = parser.parse_args()
    print(f"{machine()}; {versions()}; load average {load_average()} before; "
          f"revision {revision()}")
    runs = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(_measure(args.data, variant, args.train_images))
    print(f"load average {load_average()} after")
    print("\n| loaders | images | CPU s | wall s | CPU vs per part |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(r["cpu"] for r in runs["per part"])
    for variant in VARIANTS:
        cpu = statistics.median(r["cpu"] for r in runs[variant])
        wall = statistics.median(r["wall"] for r in runs[variant])
        print(f"| {variant} | {runs[variant][0]['images']:,} | {cpu:.1f} | {wall:.1f} | "
              f"{cpu / base:.2f} |")


if __name__ == "__main__":
    main()
