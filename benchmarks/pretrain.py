"""Pretraining benchmark: `harness pretrain` against a bare PyTorch loop, side by side.

Both sides train the same model (the CPU recipe's small-stem ResNet-18 and projector) with the
same global batch, loss, LARS schedule, worker count, threads per worker and FFCV two-view
loader on the same data. The bare loop is what a hand-written script would be:
torch.multiprocessing workers, gloo DistributedDataParallel (when there is more than one), no
Ray, no online probe, no logging, no checkpoints. The harness run is `harness pretrain` itself
(Ray Train V2, online probe, TensorBoard, metrics.jsonl, checkpoints), with its settings.
On GPUs (workers.use_gpu=true) both train in bf16 autocast with channels_last (NCCL, and
SyncBatchNorm with more than one GPU); data wait is the share of step-loop time spent waiting
for the next batch, kernels synchronised at the end of each step on both sides.

Measured per epoch; the first epoch of each run (FFCV's numba compilation, first-touch
allocations) is excluded as warm-up; mean ± std over the remaining epochs of all rounds (each
round runs both sides, alternating which goes first):
  - train loop: images/s per worker inside the step loop (the harness's time/epoch_s, which
    includes its data waits, probe step and per-step logging);
  - end to end: images per epoch / time between consecutive epoch ends, which adds the
    harness's per-epoch probe evaluation, ray.train.report and checkpoints;
  - start-up: launch to the end of the warm-up epoch, minus that epoch's own time.
Run from the repository root (the data is prepared once, then reused):

    .venv/bin/python benchmarks/pretrain.py [--epochs 5] [--set key=value ...]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.ray_runtime import start_ray  # noqa: F401  (first: Ray's environment)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from data_prep import prepare  # noqa: E402
from harness.config import PretrainConfig, load_config  # noqa: E402
from harness.data import beton_path, two_view_loader  # noqa: E402
from harness.pretrain.driver import pretrain, provenance  # noqa: E402
from harness.pretrain.run_log import read_metrics  # noqa: E402
from harness.pretrain.step import (TimedBatches, TwinStep, build_model,  # noqa: E402
                                   build_optimizer)

REPO = Path(__file__).resolve().parents[1]


def bare_worker(rank: int, world: int, init_file: str, config: dict, out: str) -> None:
    """One process of the hand-written loop; rank 0 writes [(images, seconds)] per epoch."""
    cfg = PretrainConfig.from_dict(config)
    torch.set_num_threads(cfg.workers.cpus_per_worker)
    gpu = cfg.workers.use_gpu
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1:
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world)
    torch.manual_seed(cfg.seed)
    data_dir = Path(cfg.data.dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    training = cfg.data.training_part(manifest)
    loader = two_view_loader(
        beton_path(data_dir, training.split), batch_size=cfg.per_worker_batch,
        resolution=cfg.data.resolution, views=cfg.data.view_augments(), device=device,
        num_workers=cfg.data.loader_workers, seed=cfg.seed, distributed=world > 1,
        indices=training.indices)
    # The worker's own builders and step (harness.pretrain.step): the same model, optimizer, lr
    # schedule, precision and loss. Left out: Ray, the online probe, logging, checkpoints.
    model = build_model(cfg, world_size=world, device=device)
    if world > 1:
        model = DistributedDataParallel(model)
    optimizer = build_optimizer(model, cfg)
    steps = len(loader)
    train_step = TwinStep(model, optimizer, cfg, steps_per_epoch=steps, device=device)
    step, epochs = 0, []
    for _ in range(cfg.epochs):
        start, images = time.perf_counter(), 0
        batches = TimedBatches(loader)
        for view_a, view_b, label in batches:
            train_step(view_a, view_b, label, step)
            if gpu:
                torch.cuda.synchronize(device)  # as the harness: data wait is not kernel time
            step += 1
            images += view_a.shape[0]
        epochs.append((images, time.perf_counter() - start, batches.waited))
    if rank == 0:
        Path(out).write_text(json.dumps(epochs))
    if world > 1:
        dist.destroy_process_group()


def run_bare(cfg: PretrainConfig, work: Path) -> dict:
    world = cfg.workers.num_workers
    out = work / "bare.json"
    # As the harness's workers get them: loopback only, Ray's OMP_NUM_THREADS.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ["OMP_NUM_THREADS"] = str(cfg.workers.cpus_per_worker)
    start = time.perf_counter()
    mp.spawn(bare_worker, args=(world, str(work / "init"), cfg.to_dict(), str(out)),
             nprocs=world, join=True)
    wall = time.perf_counter() - start
    epochs = json.loads(out.read_text())
    per_worker = [n / s for n, s, _ in epochs[1:]]  # rank 0's images and time: one worker's
    return {"train": per_worker, "end_to_end": per_worker,
            "wait": [w / s for _, s, w in epochs[1:]],
            "startup": wall - sum(s for _, s, _ in epochs)}


def run_harness(cfg: PretrainConfig) -> dict:
    start = time.time()
    pretrain(cfg)
    m = read_metrics(cfg.run.run_dir)
    world = cfg.workers.num_workers
    train = [e["throughput/images_per_s_per_worker"] for e in m[1:]]
    images = [e["throughput/images_per_s"] * e["time/epoch_s"] / world for e in m]
    end_to_end = [images[i] / (m[i]["time"] - m[i - 1]["time"]) for i in range(1, len(m))]
    return {"train": train, "end_to_end": end_to_end,
            "wait": [e["time/data_wait_fraction"] for e in m[1:]],
            "gpu_gb": max((e.get("memory/gpu_max_allocated_gb", 0.0) for e in m), default=0.0),
            "startup": m[0]["time"] - start - m[0]["time/epoch_s"]}


def _merged() -> dict:
    return {"train": [], "end_to_end": [], "wait": [], "startup": [], "gpu_gb": 0.0}


def _merge_into(into: dict, result: dict) -> None:
    for key in ("train", "end_to_end", "wait"):
        into[key] += result[key]
    into["startup"].append(result["startup"])
    into["gpu_gb"] = max(into["gpu_gb"], result.get("gpu_gb", 0.0))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets = Path(os.environ.get("BT_DATASETS", REPO.parent / "shared" / "datasets"))
    parser.add_argument("--config", default=str(REPO / "experiments" / "cifar10_cpu.yaml"))
    parser.add_argument("--data", default=str(REPO / "runs" / "main" / "data" / "cifar10"),
                        help="prepared CIFAR-10 (written from $BT_DATASETS if missing)")
    parser.add_argument("--epochs", type=int, default=5, help="including 1 warm-up epoch")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each side, alternating which goes first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    load = os.getloadavg()  # another job on the machine would skew both sides
    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        prepare([str(datasets / "cifar10" / f"{s}.tar.gz") for s in ("train", "test")], data,
                write_mode="raw", progress=False)
    bare, harness = _merged(), _merged()
    with tempfile.TemporaryDirectory(prefix="bt-pretrain-bench-") as tmp:
        for round_ in range(args.rounds):
            cfg = load_config(args.config, [f"data.dir={data}", f"epochs={args.epochs}",
                                            f"run.checkpoint_every={args.epochs}", *args.set],
                              name=f"bench{round_}", storage_path=tmp)
            # Alternate which side goes first: a slow drift in the machine's load hits both.
            sides = [("bare PyTorch loop", bare, lambda: run_bare(cfg, Path(tmp))),
                     ("harness pretrain", harness, lambda: run_harness(cfg))]
            for name, into, run in (sides if round_ % 2 == 0 else sides[::-1]):
                print(f"... round {round_ + 1}/{args.rounds}: {name}, {args.epochs} epochs",
                      file=sys.stderr, flush=True)
                _merge_into(into, run())
        info = provenance(cfg, None)

    w = cfg.workers
    manifest = json.loads((data / "manifest.json").read_text())
    images = cfg.data.training_part(manifest).count(manifest)
    v = info["versions"]
    print(f"\n{cfg.model.arch} (small stem: {cfg.model.small_image_stem}), projector "
          f"{cfg.model.projector}, {cfg.data.resolution} px, global batch {cfg.batch_size}, "
          f"{w.num_workers} worker(s) x {w.cpus_per_worker} CPU, {images} training images of "
          f"{data} ({cfg.data.subset or 'whole split'}), {args.rounds} x {args.epochs} epochs (first of each excluded); "
          f"harness probe on {cfg.probe.eval_images or 'all'} test images per epoch")
    gpus = ", ".join(info["hardware"]["gpus"]) or "no GPU"
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, {gpus}; load average before: "
          f"{load[0]:.1f}; git {info['git']}")
    print(f"versions: python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, "
          f"ray {v['ray']}, ffcv {v['ffcv']}\n")
    print("| loop | train-loop images/s per worker | end-to-end images/s per worker | "
          "data wait % | start-up s |")
    print("| --- | --- | --- | --- | --- |")
    backend = "nccl" if w.use_gpu else "gloo"
    for name, r in ((f"bare PyTorch (mp.spawn, DDP/{backend})", bare),
                    ("harness pretrain (Ray Train)", harness)):
        wait = 100 * statistics.mean(r["wait"])
        print(f"| {name} | {_fmt(r['train'])} | {_fmt(r['end_to_end'])} | {wait:.1f} | "
              f"{statistics.mean(r['startup']):.0f} |")
    if harness["gpu_gb"]:
        print(f"\nharness peak GPU memory allocated: {harness['gpu_gb']:.1f} GiB")
    for label, key in (("train loop", "train"), ("end to end", "end_to_end")):
        overhead = 1 - statistics.mean(harness[key]) / statistics.mean(bare[key])
        print(f"\nharness overhead, {label}: {100 * overhead:.1f}%", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
