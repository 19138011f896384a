"""A sweep's configuration file, and the fixed list of trials it expands to.

    name: cifar10_demo
    experiment: cifar10_demo.yaml        # the pretraining config every trial starts from
    storage_path: runs/sweeps            # RUN_DIR = storage_path/name; or a URI (s3://...)
    set: {epochs: 4}                     # optional: keys set on every trial
    search:
      mode: grid                         # grid | random
      space:                             # any dotted key of the pretraining config
        loss.lambd: [0.0025, 0.01]                  # grid: the values; random: a list is a
        model.projector: [512-512, 2048-2048]       # choice, or {loguniform: [lo, hi]},
                                                    # {uniform: [lo, hi]}, {randint: [lo, hi]}
        variant:                         # a group: named sets of keys taken together (not a
          baseline: {}                   # grid of them); the label is the trial's value
          no BN: {model.projector_bn: false}
      seeds: [0]
      num_samples: 8                     # random only: points drawn (seeded by search.seed)
    evaluate:
      protocols: [linear, knn]           # linear | knn | semi | transfer
      transfer: []                       # other `harness prep` folders
      baseline: true                     # the same protocols on a random-init backbone
      settings: {test_images: 1000}      # EvalSettings keys
    resources:
      max_concurrent_trials: 2           # trials at once; each takes its config's `workers`
    scheduler:                           # optional: stop weak trials early
      type: asha
      metric: probe/val_top1             # a per-epoch metric of the training loop: the online
      grace_period: 1                    # probe on val (the default), or loss/total
      reduction_factor: 2
    metric: knn/val/k200_top1            # the report's best row: <eval>/val/<measure>
    reference:                           # optional: the paper's result for the swept axis
      source: Zbontar et al. 2021, Table 4 (ImageNet, ResNet-50, 300 epochs)
      axis: batch_size                   # a key of search.space
      measure: ImageNet linear top-1 (%)
      baseline: 2048                     # the paper's own point; `ours`: the sweep's (default:
      values: {128: 69.7, 2048: 71.4}    # the experiment's value of the axis key)
      claims: [{flat: 2.0}]              # what the report checks (harness.results.ablation)

Every choice between trials reads the validation split only (carved from train by `harness
prep`): the report's `metric` must name a val measure and the scheduler's a val or training
metric; test measures ("knn/test/k200_top1") are for reporting and are refused here.

The file is read with the pretraining config's own machinery (harness.config.schema): one
checked section per block (SweepFile, SearchSection, EvaluateSection, ResourcesSection,
SchedulerSection, ReferenceSection), unknown keys named with a "did you mean", types checked
with the dotted key. Values keep the types YAML gave them: a trial's config is the experiment
with `set:` and the trial's point merged over it as values (harness.config.load_config), never
written out as `key=value` text and parsed back; only `--set` from the command line is text.

The trial list is a pure function of the file (random points come from a seeded generator),
so a sweep run again finds its own trials by id and skips the finished ones. Every trial's
pretraining config is built and validated here, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.config import ConfigError, PretrainConfig, load_config, read_yaml
from harness.config.schema import CliValue, Section, build_section, fail, require_positive
from harness.evaluation.settings import EvalSettings, parse_protocols
from harness.results.layout import SELECT_SPLIT, parse_column, with_split
from harness.storage import join

__all__ = ["SweepConfig", "TrialSpec", "load_sweep", "is_group", "point_key", "CLAIMS",
           "DISTRIBUTIONS", "SCHEDULER_METRICS"]

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# Per-epoch metrics ASHA can compare trials on, and which way is better. Stopping a trial is a
# choice between trials, so the probe's is its val score, never test.
SCHEDULER_METRICS = {"probe/val_top1": "max", "loss/total": "min"}
_RENAMED_SCHEDULER_METRICS = {"probe/top1": "probe/val_top1"}
# A reference's claims, each checked by the report against the measured curve
# (harness.results.ablation): {flat: P} every point within P points of each other; {rising: P}
# each point at least the previous one less P, the last above the first; {point: L, below: P}
# at least P points under the baseline; {point: L, within: P} within P points of the
# baseline; {point: L, chance: P} within P points of chance (100 / classes).
CLAIMS = {"flat": (), "rising": (), "below": ("point",), "within": ("point",),
          "chance": ("point",)}


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    params: dict[str, Any]           # the swept keys and "seed"
    config: PretrainConfig


@dataclass(frozen=True)
class SweepConfig:
    path: Path
    name: str
    experiment: Path
    run_dir: Path
    storage_uri: str | None                # where run_dir is mirrored to, if a URI was given
    overrides: dict[str, Any]
    mode: str
    space: dict[str, Any]
    seeds: tuple[int, ...]
    num_samples: int
    search_seed: int
    protocols: tuple[str, ...]
    transfer: tuple[str, ...]
    baseline: bool
    eval_settings: EvalSettings
    max_concurrent_trials: int
    scheduler: dict | None
    metric: str | None
    trials: tuple[TrialSpec, ...]
    reference: dict | None = None

    def describe(self) -> dict:
        """The sweep.json fields (harness.results.layout)."""
        return {"name": self.name, "config_file": str(self.path), "storage_uri": self.storage_uri,
                "experiment": str(self.experiment),
                "space": self.space, "mode": self.mode, "seeds": list(self.seeds),
                "num_samples": self.num_samples, "set": self.overrides, "metric": self.metric,
                "protocols": list(self.protocols), "transfer": list(self.transfer),
                "eval_settings": dataclasses.asdict(self.eval_settings),
                "scheduler": self.scheduler, "max_concurrent_trials": self.max_concurrent_trials,
                "reference": self.reference,
                "trials": {t.trial_id: t.params for t in self.trials}}


@dataclass(frozen=True)
class SearchSection(Section):
    """search: the points (space: grid lists, random distributions, groups) and the seeds."""

    SECTION: ClassVar[str] = "search"
    space: dict[str, Any] | None = None
    mode: str = "grid"                         # grid | random
    seeds: tuple[int, ...] = (0,)              # every point runs once per seed
    num_samples: int = 1                       # random mode: points drawn
    seed: int = 0                              # random mode: seed of the draws

    def __post_init__(self):
        self._check_types()
        if self.mode not in ("grid", "random"):
            fail(self._key("mode"), f"{self.mode!r}: choose grid or random")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            fail(self._key("seeds"), f"expected a list of distinct integers, got "
                                     f"{list(self.seeds)!r}")
        if self.num_samples < 1:
            fail(self._key("num_samples"), f"must be an integer >= 1, got {self.num_samples!r}")
        if self.mode == "grid" and self.num_samples != 1:
            fail(self._key("num_samples"), "a grid runs every point once per seed; repeat "
                                           "points with search.seeds, or use mode: random")
        object.__setattr__(self, "space", _check_space(self.space, self.mode))


@dataclass(frozen=True)
class EvaluateSection(Section):
    """evaluate: the protocols every trial runs after training, and their settings."""

    SECTION: ClassVar[str] = "evaluate"
    protocols: tuple[str, ...] | str = ("linear", "knn")   # a list, or "linear,knn"
    transfer: tuple[str, ...] | None = ()      # other prepared data sets, for `transfer`
    baseline: bool = True                      # a random-init backbone through each protocol
    settings: dict[str, Any] | None = None     # EvalSettings keys

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "protocols", parse_protocols(self.protocols))
        object.__setattr__(self, "transfer",
                           tuple(str(Path(d).expanduser().resolve()) for d in self.transfer or ()))
        object.__setattr__(self, "settings", dict(self.settings or {}))


@dataclass(frozen=True)
class ResourcesSection(Section):
    SECTION: ClassVar[str] = "resources"
    max_concurrent_trials: int = 1             # a local instance also caps it by its CPUs

    def __post_init__(self):
        self._check_types()
        if self.max_concurrent_trials < 1:
            fail(self._key("max_concurrent_trials"), f"must be an integer >= 1, got "
                                                     f"{self.max_concurrent_trials!r}")


@dataclass(frozen=True)
class SchedulerSection(Section):
    """scheduler: ASHA, stopping trials early on a per-epoch metric of the validation split."""

    SECTION: ClassVar[str] = "scheduler"
    type: str = "asha"
    metric: str = "probe/val_top1"
    grace_period: int = 1                      # epochs before a trial can be stopped
    reduction_factor: int = 2

    def __post_init__(self):
        self._check_types()
        if self.type != "asha":
            fail(self._key("type"), f"{self.type!r}: only asha is supported")
        object.__setattr__(self, "metric", _check_scheduler_metric(self.metric))
        require_positive(self, "grace_period")
        if self.reduction_factor < 2:
            fail(self._key("reduction_factor"), "must be >= 2 (ASHA keeps 1 in this many trials "
                                                f"at each rung), got {self.reduction_factor}")


@dataclass(frozen=True)
class ReferenceSection(Section):
    """reference: the paper's result on the sweep's one axis and the claims the report checks
    (checked against the sweep's points in _check_reference)."""

    SECTION: ClassVar[str] = "reference"
    source: str | None = None                  # where the paper gives it (table, figure)
    axis: str | None = None                    # the swept key
    measure: str = "top-1 (%)"
    baseline: Any = None                       # the paper's own point among values
    ours: Any = None                           # the point our curve is drawn relative to
    values: dict[Any, Any] = field(default_factory=dict)    # {point: published number}
    claims: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self):
        self._check_types()


@dataclass(frozen=True)
class SweepFile(Section):
    """A sweep file's top level (what `base:` merging gives)."""

    experiment: str | None = None              # the pretraining config every trial starts from
    name: str | None = None                    # default: the file's stem
    storage_path: str | None = None            # a folder or a URI; default runs/sweeps
    set: dict[str, Any] | None = None          # dotted keys of every trial
    # A section left empty (`resources:` with nothing under it) takes its defaults.
    search: SearchSection | None = None
    evaluate: EvaluateSection | None = None
    resources: ResourcesSection | None = None
    scheduler: SchedulerSection | None = None
    metric: str | None = None                  # the report's "<eval>/val/<measure>"
    reference: ReferenceSection | None = None

    def __post_init__(self):
        self._check_types()
        for name, section in (("search", SearchSection), ("evaluate", EvaluateSection),
                              ("resources", ResourcesSection)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, section())
        object.__setattr__(self, "set", dict(self.set or {}))


def is_group(values: Any) -> bool:
    """A space entry whose values are named sets of config keys, each set taken together."""
    return isinstance(values, dict) and bool(values) and \
        all(isinstance(v, dict) for v in values.values())


def _check_group(key: str, group: dict, space: dict) -> dict:
    if "." in key:
        raise ConfigError(f"search.space.{key}: a group of named settings needs a name that is "
                          "not a config key (e.g. variant), its values {label: {key: value}}")
    checked = {}
    for label, keys in group.items():
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise ConfigError(f"search.space.{key}: label {label!r}: a label is a name")
        for inner, value in keys.items():
            if inner in space:
                raise ConfigError(f"search.space.{key}.{label}.{inner}: {inner} is also swept "
                                  "as its own axis; set it in one place")
            _check_value(f"search.space.{key}.{label}.{inner}", value)
        checked[str(label)] = dict(keys)
    return checked


def _check_space(space: Any, mode: str) -> dict:
    if not isinstance(space, dict) or not space:
        raise ConfigError("search.space: name at least one config key and its values, e.g. "
                          "loss.lambd: [0.0025, 0.01]")
    space = dict(space)
    for key, values in space.items():
        if key == "seed":
            raise ConfigError("search.space.seed: list seeds under search.seeds")
        if is_group(values):
            space[key] = _check_group(key, values, space)
            continue
        if isinstance(values, list):
            if not values:
                raise ConfigError(f"search.space.{key}: the list of values is empty")
            continue
        if mode == "grid":
            raise ConfigError(f"search.space.{key}: a grid needs a list of values, got {values!r}")
        if not (isinstance(values, dict) and len(values) == 1
                and next(iter(values)) in DISTRIBUTIONS):
            raise ConfigError(f"search.space.{key}: expected a list or one of "
                              f"{{{', '.join(DISTRIBUTIONS)}: [...]}}, got {values!r}")
        (kind, bounds), = values.items()
        if kind != "choice":
            if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] < bounds[1]):
                raise ConfigError(f"search.space.{key}.{kind}: expected [low, high], "
                                  "low < high")
            if kind == "loguniform" and bounds[0] <= 0:
                raise ConfigError(f"search.space.{key}.loguniform: bounds must be > 0")
    return space


def _eval_names(protocols: tuple[str, ...], settings: EvalSettings) -> list[str]:
    """The record names this sweep's evaluations write; a transfer one is "transfer-<data set>",
    named after a prepared data set, so only its prefix is known here."""
    names = {"linear": ["linear"], "knn": ["knn"], "transfer": ["transfer-"],
             "semi": [f"semi-{s}" for s in settings.semi_subset_names()]}
    return [n for p in protocols for n in names[p]]


def _check_evaluation(trials: list, protocols: tuple[str, ...], transfer: tuple[str, ...],
                      settings: EvalSettings) -> None:
    """What every trial's evaluation will read, before any trial trains."""
    from harness.evaluation.remote import EvalRequest

    request = EvalRequest.of(protocols, settings, transfer)
    for data_dir, resolution in sorted({(t.config.data.dir, t.config.data.resolution)
                                        for t in trials}):
        try:
            request.check(data_dir, resolution)
        except ConfigError as err:
            raise ConfigError(f"evaluate: {err}") from None


def _check_metric(metric: Any, protocols: tuple[str, ...], settings: EvalSettings) -> str | None:
    """The report's `metric`: "<eval>/val/<measure>" of an evaluation this sweep runs."""
    if metric is None:
        return None
    if not isinstance(metric, str) or "/" not in metric:
        raise ConfigError(f"metric: {metric!r}: expected <eval>/val/<measure>, e.g. "
                          "knn/val/k200_top1")
    name, split, measure = parse_column(metric)
    if split != SELECT_SPLIT:
        what = "reads the test split" if split else "names no split"
        raise ConfigError(f"metric: {metric!r} {what}: the best row is selected on the validation "
                          "split only, and test is for reporting; write metric: "
                          f"{with_split(metric, SELECT_SPLIT)}")
    names = _eval_names(protocols, settings)
    if not any(name == n or (n.endswith("-") and name.startswith(n) and name != n)
               for n in names):
        shown = [f"{n}<data set>" if n.endswith("-") else n for n in names]
        raise ConfigError(f"metric: {metric!r}: this sweep runs no evaluation {name!r} "
                          f"(evaluate.protocols: {', '.join(protocols)}); name one of: "
                          f"{', '.join(shown)}")
    if not measure:
        raise ConfigError(f"metric: {metric!r}: name a measure after val/, e.g. {name}/val/top1")
    return metric


def _check_scheduler_metric(metric: Any) -> str:
    if metric in _RENAMED_SCHEDULER_METRICS:
        new = _RENAMED_SCHEDULER_METRICS[metric]
        raise ConfigError(f"scheduler.metric: {metric!r} was renamed {new}: the online probe is "
                          "now scored on the validation split, so that stopping trials early "
                          f"never reads the test set; write metric: {new}")
    if isinstance(metric, str) and "test" in re.split(r"[/_]", metric):
        raise ConfigError(f"scheduler.metric: {metric!r} reads the test split: ASHA chooses "
                          "between trials, and choices read the validation split only (test is "
                          f"for reporting); choose one of: {', '.join(SCHEDULER_METRICS)}")
    if metric not in SCHEDULER_METRICS:
        raise ConfigError(f"scheduler.metric: {metric!r}: choose one of the metrics the training "
                          f"loop reports every epoch: {', '.join(SCHEDULER_METRICS)}")
    return metric


def _draw(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    (kind, bounds), = spec.items()
    if kind == "choice":
        return bounds[int(rng.integers(len(bounds)))]
    low, high = bounds
    if kind == "randint":
        return int(rng.integers(low, high + 1))
    if kind == "uniform":
        return float(rng.uniform(low, high))
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _points(mode: str, space: dict, num_samples: int, seed: int) -> list[dict]:
    """The sweep's points, each {key: value} with a group's label and the keys it sets."""
    keys = list(space)
    axes = {k: list(v) if is_group(v) else v for k, v in space.items()}  # a group: its labels
    if mode == "grid":
        points = [dict(zip(keys, values)) for values in itertools.product(*axes.values())]
    else:
        rng = np.random.default_rng([seed, 2021])
        points = [{k: _draw(axes[k], rng) for k in keys} for _ in range(num_samples)]
    return [{k: v for key, label in point.items()
             for k, v in ({key: label, **space[key][label]} if is_group(space[key])
                          else {key: label}).items()} for point in points]


def _check_value(key: str, value: Any) -> Any:
    """A value a sweep sets or sweeps, as YAML typed it: a scalar, null, or a list of scalars (a
    range such as data.view_a.crop_scale: [1.0, 1.0]). The schema checks it against the key's
    declared type."""
    scalar = (str, int, float, bool)
    if isinstance(value, list) and value and all(isinstance(v, scalar) for v in value):
        return value
    if value is not None and not isinstance(value, scalar):
        raise ConfigError(f"{key}: a swept value must be a number, string, true/false, null or "
                          f"a list of them, got {value!r}")
    return value


def _check_reference(raw: ReferenceSection | None, space: dict, trials: list[TrialSpec],
                     experiment: Path, fixed: dict) -> dict | None:
    """The `reference:` section: the paper's result on the sweep's one axis, and the claims the
    report checks against the measured curve. Each baseline must be a point the curve has."""
    if raw is None:
        return None
    ref = dataclasses.asdict(raw)
    for key in ("source", "axis", "claims"):
        if ref[key] is None:
            raise ConfigError(f"reference.{key}: required (source: where the paper gives it; "
                              "axis: the swept key; claims: what the report checks)")
    axis = ref["axis"]
    if axis not in space:
        raise ConfigError(f"reference.axis: {axis!r} is not swept; search.space has: "
                          f"{', '.join(space)}")
    others = [k for k in space if k != axis]
    if others:
        raise ConfigError(f"reference.axis: {axis}: an ablation sweeps its axis alone (and "
                          f"seeds), but search.space also sweeps {', '.join(others)}")
    group = is_group(space[axis])
    points = {point_key(t.params[axis]) for t in trials}
    if ref["ours"] is not None:
        ours = ref["ours"]
    elif group:
        raise ConfigError(f"reference.ours: name the label of {axis} the others are compared "
                          f"with, one of: {', '.join(space[axis])}")
    else:
        value = load_config(experiment, values=fixed, check_data=False).to_dict()
        for part in axis.split("."):
            value = value[part]
        ours = value
    if point_key(ours) not in points:
        raise ConfigError(f"reference.ours: {ours!r} (the curve's own baseline) is not a point "
                          f"of the sweep; {axis} takes: {', '.join(sorted(map(str, points)))}")
    values = ref.get("values") or {}
    if not isinstance(values, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
        raise ConfigError(f"reference.values: expected {{{axis} value: published number}}, "
                          f"got {values!r}")
    values = {point_key(k): float(v) for k, v in values.items()}
    if values and point_key(ref.get("baseline")) not in values:
        raise ConfigError(f"reference.baseline: {ref.get('baseline')!r}: name the paper's own "
                          "point among reference.values; its curve is drawn relative to it")
    claims = [dict(c) for c in ref["claims"]]
    if not claims:
        raise ConfigError("reference.claims: a list, e.g. [{flat: 1.0}]")
    for claim in claims:
        kinds = [k for k in (claim if isinstance(claim, dict) else {}) if k in CLAIMS]
        if len(kinds) != 1 or set(claim) != {kinds[0], *CLAIMS[kinds[0]]}:
            raise ConfigError(f"reference.claims: {claim!r}: expected one of {{flat: P}}, "
                              "{rising: P}, {point: L, below: P}, {point: L, within: P}, "
                              "{point: L, chance: P} (P in accuracy points)")
        if not isinstance(claim[kinds[0]], (int, float)) or claim[kinds[0]] < 0:
            raise ConfigError(f"reference.claims: {claim!r}: {kinds[0]} takes points >= 0")
        if "point" in claim and point_key(claim["point"]) not in points:
            raise ConfigError(f"reference.claims: {claim!r}: {claim['point']!r} is not a point "
                              f"of the sweep")
    return {"source": str(ref["source"]), "axis": axis,
            "measure": ref["measure"],
            "baseline": point_key(ref.get("baseline")) if values else None,
            "ours": point_key(ours), "values": values, "claims": claims}


def point_key(value: Any) -> str:
    """A point of an axis as text, the same for 0.005 from YAML and 0.005 in a record."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_trial_ids(ids: list[str], only: list[str] | None, file: str) -> None:
    """`--trials`: every id named must be one of the file's trials."""
    unknown = [i for i in only or () if i not in ids]
    if unknown:
        raise ConfigError(f"--trials {unknown[0]}: no such trial in {file}; it has "
                          f"{ids[0]} .. {ids[-1]}")


def load_sweep(path: Path | str, *, name: str | None = None, storage_path: str | None = None,
               overrides: list[str] | tuple[str, ...] = (),
               eval_overrides: list[str] | tuple[str, ...] = (),
               check_data: bool = True, only: list[str] | None = None) -> SweepConfig:
    """Read and check a sweep file; every trial's pretraining config is validated (and, with
    check_data, against its prepared data set). overrides: `--set` KEY=VALUE of every trial's
    pretraining config; eval_overrides: `--eval-set` KEY=VALUE over evaluate.settings.
    only: the trial ids this run will train (`--trials`): an unknown one is refused, and only
    these are checked against the data (the others are checked when a run trains them: a smoke
    run of one small trial needs no data set large enough for the file's largest batch)."""
    path = Path(path).resolve()
    raw = read_yaml(path)  # a sweep file may start from another with `base:`, too
    spec = build_section(SweepFile, raw, "")
    if spec.experiment is None:
        raise ConfigError(f"experiment: {path.name} must name the pretraining config every trial "
                          "starts from, e.g. experiment: cifar10_demo.yaml")
    experiment = (path.parent / spec.experiment).resolve()
    name = name or spec.name or path.stem
    storage = storage_path or spec.storage_path or "runs/sweeps"
    storage_uri = None
    if "://" in str(storage):
        # A URI (s3://, gs://, file://, anything pyarrow.fs opens, as Ray's storage_path): each
        # trial's training run is stored there (its workers write to it from any node); the
        # sweep's own records are written in a local folder and mirrored (harness.storage).
        from harness.storage import check_uri, local_root

        storage_uri = join(str(storage), name)
        check_uri(storage_uri)
        storage = local_root()
    # Relative paths are taken from the current directory, as in the pretraining configs.
    run_dir = Path(storage).expanduser().resolve() / name

    search, ev = spec.search, spec.evaluate
    raw_settings = dict(ev.settings)
    for item in eval_overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--eval-set {item!r}: expected key=value, e.g. linear_mode=fast")
        raw_settings[key.strip().removeprefix("eval.")] = CliValue(value)
    try:
        settings = EvalSettings.from_dict(raw_settings)
    except ConfigError as err:
        raise ConfigError(f"evaluate.settings: {err}") from None
    metric = _check_metric(spec.metric, ev.protocols, settings)
    scheduler = dataclasses.asdict(spec.scheduler) if spec.scheduler else None

    fixed = spec.set
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: expected key=value")
    # The file's values as YAML typed them; --set's as text, which the schema parses by the
    # key's declared type (as `harness pretrain --set` does).
    fixed = {**fixed, **{k.strip(): CliValue(v) for k, v in (o.split("=", 1) for o in overrides)}}

    trials = []
    space = search.space
    points = _points(search.mode, space, search.num_samples, search.seed)
    check_trial_ids([f"t{i:04d}" for i in range(len(points) * len(search.seeds))], only,
                    path.name)
    for seed in search.seeds:
        for point in points:
            trial_id = f"t{len(trials):04d}"
            params = {**point, "seed": seed}
            group_labels = {k for k in point if is_group(space.get(k))}
            values = {k: _check_value(k, v) for k, v in {**fixed, **params}.items()
                      if k not in group_labels}
            try:
                # RUN_DIR/trials/<id>/pretrain; in the URI itself where the sweep has one, so
                # that a trial's workers on any node write their records there.
                trial_storage = (join(storage_uri, "trials", trial_id) if storage_uri
                                 else str(run_dir / "trials" / trial_id))
                cfg = load_config(experiment, values=values, name="pretrain",
                                  storage_path=trial_storage,
                                  check_data=check_data and (not only or trial_id in only))
            except ConfigError as err:
                raise ConfigError(f"trial {trial_id} ({params}): {err}") from None
            trials.append(TrialSpec(trial_id, params, cfg))
    if (scheduler and scheduler["metric"] == "probe/val_top1"
            and not all(t.config.probe.enabled for t in trials)):
        raise ConfigError("scheduler.metric: probe/val_top1 needs probe.enabled: true in every "
                          "trial")
    if scheduler and scheduler["grace_period"] >= (last := max(t.config.epochs for t in trials)):
        raise ConfigError(f"scheduler.grace_period: {scheduler['grace_period']} is not below the "
                          f"trials' {last} epochs: ASHA stops a trial only after its grace period "
                          "and before its last epoch, so it would never stop one; lower "
                          "grace_period, raise epochs, or drop the scheduler section")
    if check_data:
        _check_evaluation([t for t in trials if not only or t.trial_id in only], ev.protocols,
                          ev.transfer, settings)
    reference = _check_reference(spec.reference, space, trials, experiment, fixed)
    return SweepConfig(path, name, experiment, run_dir, storage_uri, fixed, search.mode, space,
                       search.seeds, search.num_samples, search.seed, ev.protocols,
                       ev.transfer, ev.baseline, settings,
                       spec.resources.max_concurrent_trials, scheduler, metric, tuple(trials),
                       reference)
