"""The Ray Train worker loop: what every data-parallel worker runs (`train_loop`).

Each worker reads its own shard of the training split through the FFCV two-view loader, runs
both views through the twin network (DDP, via ray.train.torch.prepare_model), and steps LARS on
the Barlow Twins loss over the GLOBAL batch (harness.loss all-reduces the cross-correlation with
autograd). The learning rate follows the authors' per-step warm-up + cosine. Per epoch: the
online probe is evaluated on the validation list, metrics go to `ray.train.report` (and, from
rank 0, to TensorBoard and metrics.jsonl), and every `run.checkpoint_every` epochs rank 0
attaches a checkpoint. A restarted worker group, or a run started again under the same name,
resumes from Ray's latest checkpoint at the same optimizer step, with the same data order.

The step itself, the model (SyncBatchNorm on multi-GPU, channels_last and bf16 autocast on
GPU, float32 on CPU) and LARS are built in harness.pretrain.step, which needs no Ray.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from data_prep import read_manifest, validation_part
from harness import storage
from harness.checkpoint import checkpoint_dir_name, load_state, save_state, write_export
from harness.config import PretrainConfig
from harness.data.prepared import beton_path
from harness.evaluation.remote import EvalRequest, evaluate_run
from harness.model import BarlowTwins
from harness.pretrain.probe import OnlineProbe
from harness.pretrain.run_log import RunLog, duration
from harness.pretrain.step import (TimedBatches, TwinStep, autocast_for, build_model,
                                   build_optimizer)

__all__ = ["train_loop"]

# Ray Train V2 tees print() to stdout and its logger (each line shows twice); a logger shows once.
log = logging.getLogger(__name__)
# harness.loss needs the autograd-aware all_reduce; its suggested replacement is a private module.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


def train_loop(loop_config: dict) -> None:
    """Ray Train entry point: loop_config = {"config": PretrainConfig.to_dict(), "evaluate":
    an EvalRequest as a dict, or None}: with a request, rank 0 evaluates the run's last
    checkpoint after training (harness.evaluation.remote)."""
    worker = _Worker(PretrainConfig.from_dict(loop_config["config"]))
    trained = worker.run()
    request = loop_config.get("evaluate")
    if request and trained and worker.rank == 0:
        worker.evaluate(EvalRequest.from_dict(request))


def _sample(indices: np.ndarray, wanted: int | None, seed: int) -> np.ndarray:
    if wanted is None or wanted >= len(indices):
        return indices
    # Random, not the first `wanted`: prep stores a split sorted by class.
    return np.sort(np.random.default_rng(seed).choice(indices, size=wanted, replace=False))


def _seed_epoch(loader, seed: int, rank: int, epoch: int) -> None:
    """Make epoch `epoch`'s data the same whether the run got here directly or by resuming.

    FFCV orders an epoch by (seed, its epoch counter); the photometric draws come from the
    loader's augmenters' generators, the flips from its flip generators; the crops follow the
    epoch's order (ffcv_two_view). All are set from the epoch instead of carried over.
    """
    loader.loader.next_epoch = epoch
    for i, augment in enumerate(loader.augment):
        state = np.random.SeedSequence([seed, rank, i, epoch]).generate_state(1)[0]
        augment.generator.manual_seed(int(state))
    for i, generator in enumerate(loader.flip_generators):
        fresh = np.random.PCG64(np.random.SeedSequence([seed, rank, 2 + i, epoch]))
        generator.bit_generator.state = fresh.state


class _Worker:
    """One Ray Train worker's whole run: its stages, in the order __init__ runs them.

    1. process set-up: rank, world size, device, torch threads, the seed of the initial weights;
    2. restore: the newest checkpoint Ray hands this worker group, if any (its optimizer step,
       epoch, model, optimizer and probe state);
    3. loaders: this rank's shard of the training images (two views), and of the validation
       list for the online probe;
    4. model: the twin network (DDP through Ray), LARS and the step that drives them;
    5. run log: metrics.jsonl and TensorBoard, written by rank 0 only.
    `run()` then trains from the restored epoch to the last one.

    Names: `log` is this module's logger, `self.run_log` the run's own record, `global_step`
    the optimizer steps taken over the whole run, `train_step` the callable that takes one.
    """

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.run_dir = cfg.run.run_dir
        self.diverged: str | None = None
        # Where this worker's start-up went, reported with its first epoch (time/startup/*).
        self.startup = {"before_training_fn": time.time() - _process_started()}
        lap = _Laps(self.startup)
        self._set_up_process()
        lap("set_up")
        state = self._restore()
        lap("restore")
        self.global_step = state["step"] if state else 0
        self.start_epoch = state["epoch"] if state else 0
        data_dir = Path(cfg.data.dir)
        manifest = read_manifest(data_dir)
        training = cfg.data.training_part(manifest)
        self._build_loaders(data_dir, manifest, training)
        lap("loaders")
        self._build_model(state, num_classes=len(manifest["classes"]))
        lap("model")
        self._open_run_log(data_dir, training.split)
        lap("run_log")

    def _set_up_process(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        # Ray sets OMP_NUM_THREADS from the worker's CPUs; torch's own count is set explicitly.
        torch.set_num_threads(self.cfg.workers.cpus_per_worker)
        self.device = ray.train.torch.get_device()
        self.on_gpu = self.device.type == "cuda"
        self.nodes = self._count_nodes()
        if self.on_gpu:
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank (DDP checks)
        if self.world > 1 and not self.on_gpu and self.rank == 0:
            log.warning("CPU workers keep per-worker BatchNorm statistics (torch's "
                        "SyncBatchNorm is GPU-only); the loss still normalises z over the "
                        "global batch")

    def _count_nodes(self) -> int:
        """How many Ray nodes the worker group spans (by node ID: Train's node rank goes by IP
        address, and nodes may share one)."""
        if self.world == 1:
            return 1
        ids = [None] * self.world
        torch.distributed.all_gather_object(ids, ray.get_runtime_context().get_node_id())
        return len(set(ids))

    def _restore(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(directory, map_location=self.device)

    def _build_loaders(self, data_dir: Path, manifest: dict, training) -> None:
        cfg = self.cfg
        # ffcv, numba and OpenCV only where loaders are built: Train's controller imports this
        # module to unpickle train_loop and needs none of them.
        from harness.data.loaders import eval_loader, two_view_loader

        self.loader = two_view_loader(
            beton_path(data_dir, training.split), batch_size=cfg.per_worker_batch,
            resolution=cfg.data.resolution, views=cfg.data.view_augments(), device=self.device,
            num_workers=cfg.data.loader_workers, seed=cfg.seed, indices=training.indices,
            distributed=self.world > 1, passes=cfg.epochs - self.start_epoch)
        self.eval_loader = None
        if cfg.probe.enabled:
            # Measured on the validation list, never on test: ASHA stops trials on this number.
            val = validation_part(data_dir, manifest)
            every = val.indices if val.indices is not None else \
                np.arange(manifest["splits"][val.split]["count"])
            self.eval_loader = eval_loader(
                beton_path(data_dir, val.split), batch_size=cfg.per_worker_batch,
                resolution=cfg.data.resolution, device=self.device,
                num_workers=cfg.data.loader_workers, distributed=self.world > 1,
                indices=_sample(every, cfg.probe.eval_images, cfg.seed),
                passes=cfg.epochs - self.start_epoch)

    def _build_model(self, state: dict | None, *, num_classes: int) -> None:
        cfg = self.cfg
        self.model = ray.train.torch.prepare_model(
            build_model(cfg, world_size=self.world, device=self.device, state=state))
        self.optimizer = build_optimizer(self.model, cfg)
        if state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.probe = None
        if cfg.probe.enabled:
            head = OnlineProbe.head(self._module.feature_dim, num_classes)
            self.probe = OnlineProbe(ray.train.torch.prepare_model(head), cfg.probe)
            if state and state["probe"]:
                self.probe.load_state_dict(state["probe"])
        self.train_step = TwinStep(self.model, self.optimizer, cfg, probe=self.probe,
                                   steps_per_epoch=len(self.loader), device=self.device)

    def _open_run_log(self, data_dir: Path, split: str) -> None:
        cfg = self.cfg
        self.run_log = RunLog(self.run_dir, resume_step=self.global_step, enabled=self.rank == 0,
                              mirror=cfg.run.run_location if cfg.run.remote else None)
        if self.global_step == 0 and self.run_log.enabled:
            from harness.data.views import view_grid

            grid = view_grid(data_dir, resolution=cfg.data.resolution,
                             views=cfg.data.view_augments(), split=split, seed=cfg.seed)
            self.run_log.image("augmentations/original_viewA_viewB", grid, 0)
            self.run_log.text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```")

    @property
    def _module(self) -> BarlowTwins:
        return getattr(self.model, "module", self.model)

    def run(self) -> bool:
        """Train from the restored epoch to the last; False if the loss diverged."""
        if self.rank == 0 and self.global_step:
            log.info(f"resuming {self.cfg.run.name} at epoch {self.start_epoch}, "
                     f"step {self.global_step}")
        epoch_times: list[float] = []
        for epoch in range(self.start_epoch, self.cfg.epochs):
            metrics = self._train_epoch(epoch)
            if epoch == self.start_epoch:  # this worker group's first: its start-up with it
                self.startup["first_step"] = metrics["time/epoch_first_step_s"]
                metrics.update({f"time/startup/{k}_s": v for k, v in self.startup.items()})
                if self.rank == 0:
                    log.info("start-up: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s"
                                                      for k, v in self.startup.items()))
            if self.diverged:
                # Reported, not raised: a restart from the last checkpoint would diverge again.
                if self.rank == 0:
                    log.warning(f"{self.cfg.run.name}: {self.diverged}; the run stops")
                self.run_log.diverged(self.diverged, self.global_step)
                ray.train.report({**metrics, "failed": self.diverged})
                self.run_log.close()
                return False
            if self.probe is not None:
                metrics.update(self._evaluate_probe())
            metrics.update(self._memory())
            self.run_log.epoch(metrics, self.global_step)
            if self.rank == 0:
                epoch_times.append(metrics["time/epoch_s"])
                eta = (self.cfg.epochs - epoch - 1) * sum(epoch_times) / len(epoch_times)
                log.info(_summary(metrics, self.cfg.epochs) + f", ETA {duration(eta)}")
            self._report(metrics, epoch + 1)
        if self.rank == 0:
            epochs = max(self.start_epoch, self.cfg.epochs)
            write_export(self.model, self.cfg.to_dict(), self.run_dir / "export",
                         step=self.global_step, epoch=epochs,
                         source=storage.join(self.cfg.run.run_location,
                                             checkpoint_dir_name(epochs)))
        self.run_log.close("export")
        return True

    def evaluate(self, request: EvalRequest) -> None:
        """Rank 0, after the last checkpoint: the run's evaluation, in this process, on this
        device, with the CPUs this node's workers held (the other ranks have finished)."""
        # Done with: the loaders' buffers, the optimizer's state.
        self.loader = self.eval_loader = self.train_step = self.optimizer = None
        gc.collect()
        local = ray.train.get_context().get_local_world_size()
        threads = None if self.on_gpu else self.cfg.workers.cpus_per_worker * local
        start = time.perf_counter()
        outcome = evaluate_run(self.cfg.run.run_location, request, self.cfg.data.dir,
                               device=self.device, threads=threads)
        done = (f"{len(outcome['records'])} records" if outcome["error"] is None
                else f"failed: {outcome['error']}")
        log.info(f"evaluation ({', '.join(request.protocols)}): {done} in "
                 f"{time.perf_counter() - start:.1f} s")

    def _train_epoch(self, epoch: int) -> dict:
        _seed_epoch(self.loader, self.cfg.seed, self.rank, epoch)
        self.model.train()
        sums = torch.zeros(4, device=self.device)  # total, on_diag, off_diag, probe loss
        steps = 0
        first_step_at = None
        first_step_s = 0.0
        log_every = self.cfg.run.log_every_steps
        start = time.perf_counter()
        batches = TimedBatches(self.loader)
        for batch in batches:
            r = self.train_step(batch.view_a, batch.view_b, batch.label, self.global_step)
            if not torch.isfinite(r.total):
                # Every rank computes the loss from the same all-reduced cross-correlation, so
                # all of them stop here together.
                self.diverged = (f"loss is {float(r.total)} at epoch {epoch + 1} "
                                 f"(step {self.global_step + 1})")
                batches.close()  # stops FFCV's epoch thread (harness.data.loaders._epoch)
                break
            sums += torch.stack([r.total, r.on_diag, r.off_diag, r.probe_loss])
            if self.on_gpu:
                # Without this, the next next() would also wait for this step's kernels (the
                # augmentations synchronise), and that time would be misread as data wait.
                torch.cuda.synchronize(self.device)
            self.global_step += 1
            steps += 1
            if steps == 1:  # the loader's compile and first batch, the first step's own work
                first_step_s = time.perf_counter() - start
            if self.global_step == 1:  # benchmarks/sweep.py: command to first step
                first_step_at = time.time()
            self._maybe_exit_for_test()
            if log_every and self.global_step % log_every == 0 and self.run_log.enabled:
                self.run_log.scalars({"step/loss_total": float(r.total),
                                      "step/lr_weights": r.lrs[0]}, self.global_step)
        elapsed = time.perf_counter() - start
        means = (sums / max(steps, 1)).tolist()
        images = steps * self.cfg.batch_size
        lr = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        return {
            "epoch": epoch + 1, "step": self.global_step,
            "loss/total": means[0], "loss/on_diag": means[1], "loss/off_diag": means[2],
            "lr/weights": lr.get("weights", 0.0), "lr/biases": lr.get("biases_and_norm", 0.0),
            "throughput/images_per_s": images / elapsed,
            "throughput/images_per_s_per_worker": images / elapsed / self.world,
            "time/epoch_s": elapsed,
            "time/epoch_first_step_s": first_step_s if steps else elapsed,
            "time/data_wait_fraction": batches.waited / elapsed,
            "workers/nodes": self.nodes,
            **({"probe/train_loss": means[3]} if self.probe is not None else {}),
            **({"time/first_step_unix": first_step_at} if first_step_at else {}),
        }

    def _evaluate_probe(self) -> dict:
        start = time.perf_counter()
        self.model.eval()
        top1 = self.probe.evaluate(self._module.backbone, self.eval_loader,
                                   autocast_for(self.device))
        self.model.train()
        return {"probe/val_top1": top1, "time/eval_s": time.perf_counter() - start}

    def _memory(self) -> dict:
        if self.on_gpu:
            return {"memory/gpu_max_allocated_gb":
                    torch.cuda.max_memory_allocated(self.device) / 2**30}
        # ru_maxrss is in KiB on Linux: the worker process's peak resident memory.
        return {"memory/cpu_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def _report(self, metrics: dict, epochs_done: int) -> None:
        every = self.cfg.run.checkpoint_every
        if epochs_done % every and epochs_done != self.cfg.epochs:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                probe = self.probe.state_dict() if self.probe is not None else None
                save_state(directory, model=self.model, optimizer=self.optimizer, probe=probe,
                           step=self.global_step, epoch=epochs_done, config=self.cfg.to_dict())
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=checkpoint_dir_name(epochs_done))

    def _maybe_exit_for_test(self) -> None:
        """Test-only failure injection: the last rank dies once, at run.debug_exit_at_step."""
        target = self.cfg.run.debug_exit_at_step
        if target is None or self.global_step != target or self.rank != self.world - 1:
            return
        # In the run's own storage: the restarted worker may run on another node.
        marker = storage.join(self.cfg.run.run_location, f"debug_exit_at_step_{target}.done")
        if storage.exists(marker):  # a restarted worker group passes this step again: die once
            return
        storage.write_text(marker, f"rank {self.rank} exited at step {target}\n")
        log.warning(f"debug_exit_at_step={target}: rank {self.rank} exits now")
        os._exit(1)


def _process_started() -> float:
    """This process's start (Unix time): what came before the training function (the
    process's start by Ray, its imports, Train's set-up of it) counts to the start-up."""
    import psutil  # a dependency of ray[default]

    return psutil.Process().create_time()


class _Laps:
    """Seconds since the previous lap, under each lap's name, into `into`."""

    def __init__(self, into: dict):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = now - self.last
        self.last = now


def _summary(m: dict, epochs: int) -> str:
    probe = f" probe val top-1 {m['probe/val_top1']:.3f}" if "probe/val_top1" in m else ""
    return (f"epoch {m['epoch']}/{epochs} step {m['step']}: loss {m['loss/total']:.4g} "
            f"(on-diag {m['loss/on_diag']:.4g}, off-diag {m['loss/off_diag']:.4g}){probe}, "
            f"{m['throughput/images_per_s']:.1f} images/s, "
            f"data wait {100 * m['time/data_wait_fraction']:.1f}%, {m['time/epoch_s']:.1f} s")
