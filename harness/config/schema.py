"""The pretraining configuration's schema: one frozen dataclass per section, validated.

Every section's __post_init__ checks the types of its fields (an int is accepted for a float)
and their ranges, and raises ConfigError whose message starts with the dotted key
(`optimizer.lr_weights: ...`) and says what to do; PretrainConfig checks the combinations
(the global batch against the workers, warm-up against epochs). `PretrainConfig.from_dict`
builds the whole tree from plain data, naming unknown and missing keys;
`PretrainConfig.check_data` checks the run against the prepared data set. Reading YAML files
and `--set` overrides is harness.config.files's job.

The machinery is public and shared: `Section` (typed fields checked with their dotted key:
bool, int, float widened from int, str, mappings, `tuple[X, ...]` from a YAML list, `Any`,
nested sections, optional ones), `build_section` (a section tree from plain data: unknown keys
named with a "did you mean", required ones, `--set` text parsed by the declared type), `fail`
and `require_positive`. The evaluation settings and the sweep file's sections are built on it.

The paper's names stay: `lambd`, `projector` ("8192-8192-8192"), `batch_size` (the GLOBAL batch,
split evenly over `workers.num_workers`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from harness.data import VIEW_PRESETS, ViewAugment
from harness.loss import KINDS, NORMALIZE, TERMS
from harness.model import ARCHS, parse_projector
from harness.optim import LARS_VARIANTS, LR_SCALING

__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "LossConfig", "OptimizerConfig", "ProbeConfig",
    "WorkersConfig", "RunSettings", "PretrainConfig", "CliValue",
    # The machinery every checked section is built on (the evaluation settings too).
    "Section", "build_section", "fail", "require_positive",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to do."""


def fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {message}")


class Section:
    """Shared by every section: strict type checks of the declared fields, with the dotted key."""

    SECTION: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _check_type(value, hints[f.name], self._key(f.name))
            if checked is not value:
                object.__setattr__(self, f.name, checked)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """value if it has type `hint` (an int is widened to float), else ConfigError."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            fail(key, f"expected a section (mapping), got {value!r}")
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options or Any in options:
            return None
        fail(key, "is required (got null)")
    for option in options:
        if option is Any or (dataclasses.is_dataclass(option) and isinstance(value, option)):
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            # tuple[X, ...]: a YAML list, each item checked as an X; kept as a tuple (frozen).
            item = typing.get_args(option)[0]
            return tuple(_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    fail(key, f"expected {' or '.join(_describe(o) for o in options)}, got {value!r} "
              f"({type(value).__name__})")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is dict:
        return "a mapping"
    if typing.get_origin(hint) is tuple:
        item = _describe(typing.get_args(hint)[0])
        return f"a list of {item.removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def require_positive(section: Section, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            fail(section._key(name), f"must be > 0, got {getattr(section, name)}")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the prepared data set is and how views are made from it."""

    SECTION: ClassVar[str] = "data"
    dir: str                                   # a folder written by `harness prep`
    resolution: int                            # crop size of both views, in pixels
    views: str = "imagenet"                    # augmentation preset: imagenet | cifar
    view_a: dict[str, Any] = field(default_factory=dict)   # per-field overrides, ViewAugment names
    view_b: dict[str, Any] = field(default_factory=dict)
    subset: str | None = None                  # pretrain on a label subset list: 1pct | 10pct
    # Pretrain on train minus the validation list (as unseen as test), or on all of train: then
    # val images shaped the backbone, and selection on val is optimistic (README).
    pretrain_on_val: bool = False
    loader_workers: int = 2                    # FFCV decoding threads per training worker

    def __post_init__(self):
        self._check_types()
        if not 8 <= self.resolution <= 1024:
            fail(self._key("resolution"), f"must lie in [8, 1024] pixels, got {self.resolution}")
        if self.views not in VIEW_PRESETS:
            fail(self._key("views"), f"unknown preset {self.views!r}; choose one of "
                                      f"{sorted(VIEW_PRESETS)}")
        if self.loader_workers < 1:
            fail(self._key("loader_workers"), f"must be >= 1, got {self.loader_workers}")
        self.view_augments()  # every override name and value checked now, not on the workers

    def training_part(self, manifest: dict):
        """The images pretraining reads (data_prep.holdout): a label subset (drawn outside the
        validation list), or train minus val, or all of train with pretrain_on_val."""
        from data_prep import fit_part, subset_part

        if self.subset is not None:
            return subset_part(Path(self.dir), manifest, self.subset)
        return fit_part(Path(self.dir), manifest, include_validation=self.pretrain_on_val)

    def view_augments(self) -> tuple[ViewAugment, ViewAugment]:
        """The preset's two views with the per-view overrides applied."""
        known = {f.name: f for f in dataclasses.fields(ViewAugment)}
        pair = []
        for name, preset, overrides in zip(("view_a", "view_b"), VIEW_PRESETS[self.views],
                                           (self.view_a, self.view_b)):
            values = {}
            for k, v in overrides.items():
                if k not in known:
                    fail(f"data.{name}.{k}", f"unknown augmentation field{_suggest(k, known)}; "
                                              f"known: {', '.join(known)}")
                # YAML gives lists; ViewAugment's ranges are tuples.
                values[k] = tuple(v) if isinstance(v, list) else v
            try:
                pair.append(dataclasses.replace(preset, **values))
            except (TypeError, ValueError) as err:
                fail(f"data.{name}", str(err))
        return pair[0], pair[1]


@dataclass(frozen=True)
class ModelConfig(Section):
    SECTION: ClassVar[str] = "model"
    arch: str = "resnet50"
    small_image_stem: bool = False             # 3x3 stride-1 conv, no max-pool: 32-64 px images
    projector: str = "8192-8192-8192"          # dash-separated layer widths, as in the paper
    projector_bn: bool = True                  # false: the paper's "no BN in MLP" ablation

    def __post_init__(self):
        self._check_types()
        if self.arch not in ARCHS:
            fail(self._key("arch"), f"unknown backbone {self.arch!r}; choose one of {sorted(ARCHS)}")
        try:
            parse_projector(self.projector)
        except ValueError as err:
            fail(self._key("projector"), str(err))


@dataclass(frozen=True)
class LossConfig(Section):
    SECTION: ClassVar[str] = "loss"
    lambd: float = 0.0051                      # the authors' code; the paper says 5e-3
    scale: float = 1.0                         # solo-learn's CIFAR recipe: 0.1
    # The paper's loss ablations (harness.loss): both | invariance | redundancy, and
    # batch (the method) | feature | none
    terms: str = "both"
    normalize: str = "batch"
    # barlow_twins (eq. 1) | cross_entropy: the paper's cross-entropy with temperature, which
    # needs `temperature` (and uses lambd as its own off-diagonal weight)
    kind: str = "barlow_twins"
    temperature: float | None = None

    def __post_init__(self):
        self._check_types()
        require_positive(self, "lambd", "scale")
        for name, choices in (("terms", TERMS), ("normalize", NORMALIZE), ("kind", KINDS)):
            if getattr(self, name) not in choices:
                fail(self._key(name), f"{getattr(self, name)!r} is not one of: "
                      f"{', '.join(choices)}")
        if self.kind == "cross_entropy":
            if self.temperature is None:
                fail(self._key("temperature"), "loss.kind cross_entropy needs a temperature "
                     "(the paper does not state its value; 0.1 is a common start)")
            require_positive(self, "temperature")
            if self.terms != "both":
                fail(self._key("terms"), f"{self.terms!r} applies to loss.kind barlow_twins "
                     "only: the cross-entropy variant keeps both its terms; leave terms: both")
        elif self.temperature is not None:
            fail(self._key("temperature"), "applies to loss.kind cross_entropy only: remove it, "
                 "or set loss.kind: cross_entropy")


@dataclass(frozen=True)
class OptimizerConfig(Section):
    """LARS as in the authors' main.py; learning rates are per 256 images (scaled by batch/256)."""

    SECTION: ClassVar[str] = "optimizer"
    name: str = "lars"
    lr_weights: float = 0.2
    lr_biases: float = 0.0048                  # biases and BN: no weight decay, no LARS adaptation
    weight_decay: float = 1.5e-6               # the paper; the authors' code uses 1e-6
    eta: float = 0.001                         # LARS trust coefficient; solo-learn CIFAR: 0.02
    momentum: float = 0.9
    end_lr_factor: float = 0.001               # cosine decays to this fraction of the peak
    lr_scaling: str = "linear"                 # peak lr from the batch: linear | sqrt | none
    # barlowtwins: facebookresearch/barlowtwins' LARS; solo-learn: solo-learn's LARS with its
    # clip_lr (ratio from the raw gradient's norm, then min(ratio / lr, 1)); see harness.optim
    lars_variant: str = "barlowtwins"

    def __post_init__(self):
        self._check_types()
        if self.name != "lars":
            fail(self._key("name"), f"only 'lars' (the paper's optimizer) is implemented, "
                                     f"got {self.name!r}")
        require_positive(self, "lr_weights", "eta")
        if self.lr_biases < 0 or self.weight_decay < 0:
            fail(self._key("lr_biases" if self.lr_biases < 0 else "weight_decay"), "must be >= 0")
        if not 0 <= self.momentum < 1:
            fail(self._key("momentum"), f"must lie in [0, 1), got {self.momentum}")
        if self.lr_scaling not in LR_SCALING:
            fail(self._key("lr_scaling"), f"{self.lr_scaling!r}: choose one of "
                                           f"{', '.join(LR_SCALING)} (lr x batch/256, "
                                           "x sqrt(batch/256), or as given)")
        if not 0 <= self.end_lr_factor <= 1:
            fail(self._key("end_lr_factor"), f"must lie in [0, 1], got {self.end_lr_factor}")
        if self.lars_variant not in LARS_VARIANTS:
            fail(self._key("lars_variant"), f"{self.lars_variant!r}: choose one of "
                                             f"{', '.join(LARS_VARIANTS)} (the authors' LARS, or "
                                             "solo-learn's with its trust-ratio clipping)")


@dataclass(frozen=True)
class ProbeConfig(Section):
    """The online linear probe: SGD on detached features, as solo-learn's online classifier,
    but on unit features (harness.pretrain.probe): lr moves the logits, whatever the feature
    scale."""

    SECTION: ClassVar[str] = "probe"
    enabled: bool = True
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Evaluate on this many test images (a seeded sample) instead of all: on a CPU a pass over
    # the 10,000 CIFAR-10 test images costs more than a small epoch.
    eval_images: int | None = None

    def __post_init__(self):
        self._check_types()
        require_positive(self, "lr")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            fail(self._key("momentum" if self.weight_decay >= 0 else "weight_decay"),
                  "momentum must lie in [0, 1) and weight_decay be >= 0")
        if self.eval_images is not None and self.eval_images < 1:
            fail(self._key("eval_images"), "must be >= 1, or null for the whole split")


_PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")  # Ray's placement strategies


@dataclass(frozen=True)
class WorkersConfig(Section):
    SECTION: ClassVar[str] = "workers"
    num_workers: int = 1                       # Ray Train workers (one GPU each with use_gpu)
    use_gpu: bool = False
    cpus_per_worker: int = 1                   # also the worker's torch thread count
    # Ray's placement of the workers over the nodes: PACK (fewest nodes), SPREAD (as many as
    # it can), STRICT_SPREAD (each on its own node), STRICT_PACK (all on one node).
    placement: str = "PACK"

    def __post_init__(self):
        self._check_types()
        require_positive(self, "num_workers", "cpus_per_worker")
        if self.placement not in _PLACEMENTS:
            fail(self._key("placement"), f"{self.placement!r}: choose one of "
                                          f"{', '.join(_PLACEMENTS)}")


# The URI schemes pyarrow.fs.FileSystem.from_uri opens (Ray's storage_path takes the same).
_STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


@dataclass(frozen=True)
class RunSettings(Section):
    """Where the run lives (storage_path/name) and how it survives failures."""

    SECTION: ClassVar[str] = "run"
    name: str = "pretrain"                     # the same name again resumes the run
    storage_path: str = "runs/pretrain"
    checkpoint_every: int = 10                 # epochs; the last epoch is always checkpointed
    keep_checkpoints: int = 3
    max_failures: int = 2                      # worker-group restarts from the last checkpoint
    log_every_steps: int = 50                  # per-step loss / lr to TensorBoard; 0: per epoch only
    debug_exit_at_step: int | None = None      # test only: one worker os._exit(1)s once, here

    def __post_init__(self):
        self._check_types()
        if not _NAME.fullmatch(self.name):
            fail(self._key("name"), f"{self.name!r} must be letters, digits, '.', '_' or '-' "
                                     "(it becomes a folder name)")
        scheme = self.storage_path.partition("://")[0] if self.remote else None
        if scheme is not None and scheme not in _STORAGE_SCHEMES:
            fail(self._key("storage_path"), f"{scheme}:// is not a storage URI scheme pyarrow.fs "
                                             f"opens: use one of {', '.join(_STORAGE_SCHEMES)} "
                                             "(s3://bucket/prefix), or a folder")
        require_positive(self, "checkpoint_every", "keep_checkpoints")
        if self.max_failures < -1:
            fail(self._key("max_failures"), "must be >= 0, or -1 for unlimited restarts")
        if self.log_every_steps < 0:
            fail(self._key("log_every_steps"), "must be >= 0 (0 logs per epoch only)")
        if self.debug_exit_at_step is not None:
            if self.debug_exit_at_step < 1:
                fail(self._key("debug_exit_at_step"), "must be >= 1 (an optimizer step)")
            if self.max_failures == 0:
                fail(self._key("debug_exit_at_step"), "kills a worker on purpose: set "
                                                       "run.max_failures >= 1 so the run recovers")

    @property
    def remote(self) -> bool:
        """storage_path is a URI (s3://..., any pyarrow.fs URI): see harness.storage."""
        return "://" in self.storage_path

    @property
    def run_location(self) -> str:
        """Where the run's record lives: storage_path/name, a folder or a URI."""
        from harness.storage import join

        return join(self.storage_path, self.name) if self.remote else str(self.run_dir)

    @property
    def run_dir(self) -> Path:
        """storage_path/name: Ray Train's checkpoints, TensorBoard, metrics.jsonl, export/.

        With a URI storage_path, this node's working copy of the run (harness.storage): rank
        0 writes its records there and mirrors them to `run_location`."""
        if self.remote:
            from harness.storage import local_cache

            return local_cache("runs", self.storage_path, self.name)
        return Path(self.storage_path) / self.name


@dataclass(frozen=True)
class PretrainConfig(Section):
    data: DataConfig
    batch_size: int                            # GLOBAL batch, split evenly over the workers
    epochs: int
    warmup_epochs: int = 10
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        self._check_types()
        require_positive(self, "batch_size", "epochs")
        if not 0 <= self.warmup_epochs <= self.epochs:
            fail("warmup_epochs", f"must lie in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        workers = self.workers.num_workers
        if self.batch_size % workers:
            fail("batch_size", f"the global batch {self.batch_size} does not split evenly over "
                                f"workers.num_workers={workers}: use a multiple of {workers}")
        if self.batch_size // workers < 2:
            fail("batch_size", f"{self.batch_size // workers} image(s) per worker: batch "
                                "normalisation needs at least 2 per worker")
        if self.data.pretrain_on_val and self.probe.enabled:
            fail("data.pretrain_on_val", "the online probe trains on the pretraining images and "
                                          "is measured on val: with val in pretraining it would "
                                          "be measured on images it trained on. Set "
                                          "probe.enabled=false, or pretrain_on_val=false")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.workers.num_workers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> PretrainConfig:
        """Build and validate from plain data (YAML, JSON, a checkpoint); no data-set check."""
        return build_section(cls, raw, "")

    def check_data(self) -> dict:
        """Open the prepared data set and check the run against it; returns its manifest."""
        from data_prep import PrepError, read_manifest

        data_dir = Path(self.data.dir)
        if not data_dir.is_dir():
            fail("data.dir", f"{data_dir} does not exist: run `harness prep SOURCE --out "
                              f"{data_dir}` or point data.dir at a prepared folder")
        try:
            manifest = read_manifest(data_dir)
        except PrepError as err:
            fail("data.dir", str(err))
        if "train" not in manifest["splits"]:
            fail("data.dir", f"{data_dir} has no train split; it has "
                              f"{sorted(manifest['splits'])}: prepare one with `harness prep`")
        try:
            images = self.data.training_part(manifest).count(manifest)
        except PrepError as err:
            fail("data.subset" if self.data.subset else "data.dir", str(err))
        # drop_last: a worker whose shard holds less than one batch would train zero steps.
        per_worker_images = images // self.workers.num_workers
        if per_worker_images < self.per_worker_batch:
            fail("batch_size", f"{images} training images give each of the "
                                f"{self.workers.num_workers} workers {per_worker_images}, fewer "
                                f"than its batch of {self.per_worker_batch}: lower batch_size")
        return manifest


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class CliValue(str):
    """A `--set` value: still text, parsed by the declared type of its key in build_section."""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, CliValue):
        if type(None) in options and value.lower() in ("null", "none", "~"):
            return None
        if str in options:
            return str(value)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            fail(key, f"cannot parse {value!r}: {err}")
        value = parsed
    if float in options and isinstance(value, str):
        # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string, not a float.
        try:
            return float(value)
        except ValueError:
            pass
    return value


# Keys that existed once, and why they are gone: a file that still sets one is told what to do.
_REMOVED = {
    "data.eval_split": "the online probe is measured on the validation list `harness prep` "
                       "carves from train (what chooses never reads test): remove the key",
    "data.train_split": "pretraining reads the train split minus its validation list: remove "
                        "the key",
    "eval.train_split": "every fit reads the train split minus its validation list: remove the "
                        "key",
}


def _section_type(hint: Any):
    """The section class of a field typed `Section` or `Section | None`, else None."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((o for o in options if dataclasses.is_dataclass(o)), None)


def build_section(cls, raw: Any, prefix: str):
    """Instantiate dataclass `cls` from a mapping: unknown and missing keys named, types coerced."""
    where = f"section '{prefix[:-1]}'" if prefix else "the top level"
    if not isinstance(raw, dict):
        fail(prefix or "config", f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if f"{prefix}{key}" in _REMOVED:
            fail(f"{prefix}{key}", f"no longer exists: {_REMOVED[prefix + key]}")
        if key not in known:
            fail(f"{prefix}{key}", f"unknown key in {where}{_suggest(key, known)}; known keys: "
                                    f"{', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(key, "is required")
            continue
        value = raw[name]
        section = _section_type(hints[name])
        if section is not None and value is not None:
            value = build_section(section, value, f"{key}.")
        else:
            value = _coerce(value, hints[name], key)
            if isinstance(value, dict):
                value = {k: _coerce(v, Any, f"{key}.{k}") for k, v in value.items()}
        kwargs[name] = value
    return cls(**kwargs)
