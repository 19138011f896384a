"""`harness eval`: measure a backbone with the paper's protocols; one record per protocol.

    records = evaluate(load_backbone("runs/pretrain/cifar10_cpu"), ["linear", "knn"],
                       "runs/main/data/cifar10", settings=EvalSettings(test_images=1000))

Everything that can be wrong with the input (the checkpoint, each data set, subset lists,
transfer onto the pretraining data) is checked before the first image is decoded. Features
of a data set are extracted once and shared by the fast linear probe and the kNN classifier.
`with_baseline=True` runs the same protocols on a randomly initialised backbone of the same
architecture too: its records (init "random") are the reference every report shows.

Every fit reads the train part (train minus the validation list), every choice the val part,
and every protocol reports both val and test (harness.evaluation.data).

A record (JSON) holds: name (linear, knn, semi-1pct, semi-10pct, transfer-<data set>),
protocol, mode, dataset, primary (the headline measure, "top1" or "k200_top1"), metrics
("val/top1", "test/top1", ...), init, checkpoint (path, arch,
epoch, step, training config), data (folder, fingerprint, image counts, resolution), settings
(every evaluation setting and what the protocol chose), seed, wall_time_s, torch_threads (the
CPU threads it ran on), and provenance (time, git revision, library versions, hardware).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import torch

from harness.evaluation.backbone import Backbone, random_backbone
from harness.evaluation.data import EvalData, source_digests
from harness.evaluation.features import extract_parts
from harness.evaluation.finetune import finetune
from harness.evaluation.knn import knn_metrics
from harness.evaluation.linear import linear_fast, linear_paper
from harness.evaluation.settings import EvalSettings, parse_protocols
from harness.provenance import record_provenance

__all__ = ["evaluate", "plan", "plan_inputs", "EvalPlan", "default_device"]


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


@dataclasses.dataclass
class EvalPlan:
    """What an evaluation will read, every input checked."""

    protocols: tuple[str, ...]
    settings: EvalSettings
    resolution: int
    data: EvalData | None
    transfer: list[EvalData]


def _pretraining_digests(backbone: Backbone) -> set[str]:
    from data_prep import PrepError, read_manifest

    data_dir = ((backbone.config or {}).get("data") or {}).get("dir")
    if not data_dir:
        return set()
    try:
        return source_digests(read_manifest(Path(data_dir)))
    except (PrepError, OSError):
        return set()


def plan(backbone: Backbone, protocols: Sequence[str] | str, data_dir: Path | str | None, *,
         transfer_dirs: Sequence[Path | str] = (), settings: EvalSettings) -> EvalPlan:
    """Check every input of an evaluation; raises ValueError / FileNotFoundError."""
    resolution = settings.resolution or backbone.resolution
    if resolution is None:
        raise ValueError("the checkpoint does not record its training resolution: set "
                         "eval.resolution (--resolution)")
    return plan_inputs(protocols, data_dir, transfer_dirs=transfer_dirs, settings=settings,
                       resolution=resolution, pretraining=_pretraining_digests(backbone))


def plan_inputs(protocols: Sequence[str] | str, data_dir: Path | str | None, *,
                transfer_dirs: Sequence[Path | str] = (), settings: EvalSettings,
                resolution: int, pretraining: set[str] = frozenset()) -> EvalPlan:
    """plan() before there is a backbone (a run about to train): `pretraining` holds the
    source digests of the data set it trains on (none: `data_dir` is it)."""
    protocols = parse_protocols(protocols)
    in_domain = [p for p in protocols if p != "transfer"]
    if in_domain and data_dir is None:
        raise ValueError(f"protocols {in_domain} evaluate on a data set: give --data DIR")
    data = EvalData.open(data_dir, settings, resolution) if data_dir is not None else None
    if "semi" in protocols:
        for subset in settings.semi_subset_names():
            data.subset_indices(subset)
    transfer = []
    if "transfer" in protocols:
        if not transfer_dirs:
            raise ValueError("the transfer protocol needs at least one other data set: give "
                             "--transfer DIR (a `harness prep` folder)")
        if not pretraining and data is not None:
            pretraining = source_digests(data.manifest)  # no training config: --data is it
        for directory in transfer_dirs:
            # Its loaders normalise with the target's own statistics, not the pretraining
            # set's (harness.data.dataset_normalization decides).
            target = EvalData.open(directory, settings, resolution)
            if source_digests(target.manifest) & pretraining:
                raise ValueError(f"{directory} was prepared from the same images as the "
                                 "pretraining data set: transfer measures other data sets; use "
                                 "the linear protocol for this one")
            transfer.append(target)
    return EvalPlan(protocols, settings, resolution, data, transfer)


def _record(name: str, protocol: str, mode: str | None, primary: str, metrics: dict,
            used: dict, backbone: Backbone, data: EvalData, settings: EvalSettings,
            seconds: float) -> dict:
    return {
        "name": name, "protocol": protocol, "mode": mode, "dataset": data.name,
        "primary": primary, "metrics": metrics, "init": backbone.init,
        "checkpoint": backbone.describe(), "data": data.describe(),
        "settings": {**dataclasses.asdict(settings), **used}, "seed": settings.seed,
        "wall_time_s": round(seconds, 3), "torch_threads": torch.get_num_threads(),
        **record_provenance(),
    }


class _Features:
    """Features of one data set's train / val / test parts under one backbone, extracted on
    first use; the parts a protocol needs together are extracted together (`need`), so that
    parts of one file share a loader."""

    def __init__(self, backbone: Backbone, data: EvalData, settings: EvalSettings, device):
        self.backbone, self.data, self.settings, self.device = backbone, data, settings, device
        self._cache: dict[str, tuple] = {}

    def need(self, *roles: str) -> None:
        missing = [self.data.part(role) for role in roles if role not in self._cache]
        if missing:
            s = self.settings
            self._cache.update(extract_parts(
                self.backbone.module, missing, resolution=self.data.resolution,
                batch_size=s.batch_size, device=self.device, num_workers=s.loader_workers))

    def get(self, role: str):
        self.need(role)
        return self._cache[role]

    def evaluated(self) -> dict:
        """{"val": (features, labels), "test": (...)}: what every protocol reports on."""
        self.need("val", "test")
        return {role: self._cache[role] for role in ("val", "test")}


def _linear(name: str, protocol: str, backbone: Backbone, features: _Features,
            settings: EvalSettings, device) -> dict:
    data = features.data
    start = time.perf_counter()
    if settings.linear_mode == "fast":
        features.need("train", "val", "test")
        metrics, used = linear_fast(features.get("train"), features.get("val"),
                                    features.get("test"), num_classes=data.num_classes,
                                    l2=settings.linear_l2)
    else:
        metrics, used = linear_paper(backbone.module, backbone.feature_dim, data,
                                     features.evaluated(), settings=settings, device=device)
    # Features shared with another protocol are charged to the first that extracted them.
    return _record(name, protocol, settings.linear_mode, "top1", metrics, used, backbone, data,
                   settings, time.perf_counter() - start)


def _run(backbone: Backbone, p: EvalPlan, device, log) -> list[dict]:
    s = p.settings
    backbone.module.to(device)
    if device.type == "cuda":
        backbone.module.to(memory_format=torch.channels_last)
    records = []
    if p.data is not None:
        features = _Features(backbone, p.data, s, device)
        if "linear" in p.protocols:
            records.append(_linear("linear", "linear", backbone, features, s, device))
            log(records[-1])
        if "knn" in p.protocols:
            start = time.perf_counter()
            features.need("train", "val", "test")
            metrics = knn_metrics(features.get("train"), features.evaluated(), ks=s.knn_ks(),
                                  temperature=s.knn_temperature, num_classes=p.data.num_classes)
            primary = f"k{max(s.knn_ks())}_top1"
            records.append(_record("knn", "knn", None, primary, metrics,
                                   {"ks": list(s.knn_ks())}, backbone, p.data, s,
                                   time.perf_counter() - start))
            log(records[-1])
        if "semi" in p.protocols:
            for subset in s.semi_subset_names():
                start = time.perf_counter()
                metrics, used = finetune(backbone.module, backbone.feature_dim, p.data, subset,
                                         settings=s, device=device)
                records.append(_record(f"semi-{subset}", "semi", None, "top1", metrics, used,
                                       backbone, p.data, s, time.perf_counter() - start))
                log(records[-1])
    for data in p.transfer:
        features = _Features(backbone, data, s, device)
        records.append(_linear(f"transfer-{data.name}", "transfer", backbone, features, s, device))
        log(records[-1])
    backbone.module.cpu()
    return records


def evaluate(backbone: Backbone, protocols: Sequence[str] | str, data_dir: Path | str | None, *,
             transfer_dirs: Sequence[Path | str] = (), settings: EvalSettings = EvalSettings(),
             with_baseline: bool = False, device: torch.device | None = None,
             log=lambda record: None) -> list[dict]:
    """Records of `backbone` (and, with_baseline, of a random one) under each protocol."""
    p = plan(backbone, protocols, data_dir, transfer_dirs=transfer_dirs, settings=settings)
    device = device or default_device()
    records = _run(backbone, p, device, log)
    if with_baseline:
        records += _run(random_backbone(backbone, settings.seed), p, device, log)
    return records
