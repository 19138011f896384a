"""Loader benchmark: the FFCV two-view loader against torchvision ImageFolder + DataLoader.

Both sides make the same two Barlow Twins views (crop, flip, jitter, grayscale, blur,
solarization, normalisation) with the same worker count and batch size. One pass is
excluded as warm-up (FFCV's numba compilation and the page cache; torchvision's worker
start), then the median images/s of repeated timed passes is reported, with the machine
and library versions. Run from the repository root:

    .venv/bin/python benchmarks/loader.py [--datasets ../shared/datasets] [--passes 3]
"""

import argparse
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from data_prep import prepare
from harness.data import CIFAR_VIEWS, IMAGENET_VIEWS, ViewAugment, two_view_loader
from harness.data.augment import MEAN, STD, blur_kernel_size


def torchvision_view(view: ViewAugment, resolution: int) -> T.Compose:
    ops = [T.RandomResizedCrop(resolution, scale=view.crop_scale, ratio=view.crop_ratio,
                               antialias=True),
           T.RandomHorizontalFlip(view.flip_p),
           T.RandomApply([T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                         p=view.jitter_p),
           T.RandomGrayscale(view.grayscale_p)]
    if view.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(resolution), view.blur_sigma)],
                                 p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=view.solarize_p))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


class TwoViews:
    def __init__(self, views, resolution):
        self.a, self.b = (torchvision_view(v, resolution) for v in views)

    def __call__(self, image):
        return self.a(image), self.b(image)


def timed_passes(make_iter, batches: int, passes: int) -> tuple[float, list[float]]:
    """Seconds of the warm-up pass, and images/s of each timed pass of `batches` batches."""
    rates, warmup = [], 0.0
    for p in range(passes + 1):
        start, seen = time.perf_counter(), 0
        for i, batch in enumerate(make_iter()):
            seen += batch[0].shape[0]
            if i + 1 == batches:
                break
        elapsed = time.perf_counter() - start
        if p == 0:
            warmup = elapsed
        else:
            rates.append(seen / elapsed)
    return warmup, rates


def unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def bench_dataset(name, train_archive, resolution, views, write_mode, args, work: Path):
    folder = unpack(train_archive, work / name / "folder")
    beton_dir = work / name / "ffcv"
    prepare(str(folder), beton_dir, write_mode=write_mode, num_workers=args.workers,
            progress=False)
    split_root = folder / "train"
    batches = args.batches_32 if resolution <= 64 else args.batches_224

    ffcv = two_view_loader(beton_dir / "train.beton", batch_size=args.batch, resolution=resolution,
                           views=views, num_workers=args.workers, device="cpu")
    start = time.perf_counter()
    next(iter(ffcv))
    compile_s = time.perf_counter() - start
    ffcv_warm, ffcv_rates = timed_passes(lambda: iter(ffcv), batches, args.passes)

    tv = DataLoader(ImageFolder(str(split_root), transform=TwoViews(views, resolution)),
                    batch_size=args.batch, shuffle=True, num_workers=args.workers,
                    drop_last=True, persistent_workers=True)
    tv_warm, tv_rates = timed_passes(lambda: ((a, b) for (a, b), _ in tv), batches, args.passes)
    return {
        "dataset": name, "res": resolution, "mode": write_mode, "images": batches * args.batch,
        "ffcv": statistics.median(ffcv_rates), "ffcv_spread": _spread(ffcv_rates),
        "tv": statistics.median(tv_rates), "tv_spread": _spread(tv_rates),
        "compile_s": compile_s, "ffcv_warm_s": ffcv_warm, "tv_warm_s": tv_warm,
    }


def _spread(rates: list[float]) -> float:
    return (max(rates) - min(rates)) / 2


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions() -> str:
    return ", ".join(f"{p} {version(p)}" for p in
                     ("torch", "torchvision", "ffcv", "numpy", "numba", "pillow")) + \
        f", python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--datasets", default=os.environ.get("BT_DATASETS", repo.parent / "shared" / "datasets"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--passes", type=int, default=3, help="timed passes after one warm-up")
    parser.add_argument("--batches-32", type=int, default=40, help="batches per pass at 32 px")
    parser.add_argument("--batches-224", type=int, default=6, help="batches per pass at 224 px")
    parser.add_argument("--only", choices=("cifar10", "imagenette"), default=None)
    args = parser.parse_args()
    datasets = Path(args.datasets)

    plan = [("cifar10", datasets / "cifar10" / "train.tar.gz", 32, CIFAR_VIEWS, "raw"),
            ("cifar10", datasets / "cifar10" / "train.tar.gz", 32, CIFAR_VIEWS, "jpg"),
            ("imagenette", datasets / "imagenette" / "train.tar.gz", 224, IMAGENET_VIEWS, "jpg")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bt-loader-bench-") as tmp:
        for name, archive, res, views, mode in plan:
            if args.only and name != args.only:
                continue
            print(f"... {name} {res} px, FFCV {mode} mode", file=sys.stderr, flush=True)
            rows.append(bench_dataset(name, archive, res, views, mode, args, Path(tmp) / mode))

    print(f"\nTwo-view loader, images/s (pairs of views), batch {args.batch}, "
          f"{args.workers} workers, median of {args.passes} passes after 1 warm-up pass")
    print(f"machine: {machine()}\nversions: {versions()}\n")
    print("| data set | res | FFCV mode | FFCV img/s | torchvision img/s | ratio | "
          "FFCV compile s | warm-up pass s (FFCV / tv) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['res']} | {r['mode']} | {r['ffcv']:,.0f} ± {r['ffcv_spread']:,.0f} "
              f"| {r['tv']:,.0f} ± {r['tv_spread']:,.0f} | {r['ffcv'] / r['tv']:.1f}x "
              f"| {r['compile_s']:.1f} | {r['ffcv_warm_s']:.1f} / {r['tv_warm_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
