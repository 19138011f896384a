"""Sweep files: the trial list they expand to, and the errors they give before Ray starts."""

import re
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError
from harness.sweep.config import load_sweep

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, cifar_prepared: Path, **changes) -> Path:
    raw = {"name": "s", "experiment": str(REPO / "experiments" / "cifar10_demo.yaml"),
           "storage_path": str(tmp_path / "sweeps"),
           "set": {"data.dir": str(cifar_prepared), "data.subset": None, "batch_size": 64},
           "search": {"mode": "grid", "space": {"loss.lambd": [0.002, 0.02],
                                                "model.projector": ["64-64", "128-128"]},
                      "seeds": [0, 1]},
           "evaluate": {"protocols": ["linear", "knn"]}}
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_grid_expands_every_point_per_seed(tmp_path, cifar_prepared):
    sweep = load_sweep(_write(tmp_path, cifar_prepared))
    assert [t.trial_id for t in sweep.trials] == [f"t{i:04d}" for i in range(8)]
    assert sweep.trials[0].params == {"loss.lambd": 0.002, "model.projector": "64-64", "seed": 0}
    assert sweep.trials[7].params == {"loss.lambd": 0.02, "model.projector": "128-128", "seed": 1}
    cfg = sweep.trials[7].config
    assert (cfg.loss.lambd, cfg.model.projector, cfg.seed, cfg.batch_size) == (0.02, "128-128", 1, 64)
    assert cfg.data.subset is None
    assert cfg.run.run_dir == tmp_path / "sweeps" / "s" / "trials" / "t0007" / "pretrain"


def test_random_search_is_seeded_and_in_bounds(tmp_path, cifar_prepared):
    search = {"mode": "random", "num_samples": 5, "seed": 3,
              "space": {"loss.lambd": {"loguniform": [1e-3, 1e-1]},
                        "batch_size": [32, 64], "optimizer.lr_weights": {"uniform": [0.1, 0.5]}}}
    first = load_sweep(_write(tmp_path, cifar_prepared, search=search))
    again = load_sweep(_write(tmp_path, cifar_prepared, search=search))
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert len({t.params["loss.lambd"] for t in first.trials}) == 5
    for t in first.trials:
        assert 1e-3 <= t.params["loss.lambd"] <= 1e-1 and t.params["batch_size"] in (32, 64)
        assert t.config.batch_size == t.params["batch_size"]


@pytest.mark.parametrize("changes, message", [
    ({"search": {"space": {"loss.lambd": {"loguniform": [1e-3, 1e-1]}}}}, "a grid needs a list"),
    ({"search": {"mode": "random", "space": {"loss.lambd": {"normal": [0, 1]}}}},
     "expected a list or one of"),
    ({"search": {"space": {"loss.lamb": [0.1]}}}, "loss.lamb: unknown key"),
    ({"search": {"space": {"batch_size": [4096]}}}, "trial t0000"),
    ({"search": {"space": {}}}, "name at least one config key"),
    ({"storage_path": "nosuchscheme://bucket/sweeps"}, "cannot open 'nosuchscheme://bucket/sweeps/s'"),
    ({"evaluate": {"protocols": ["linear", "probe"]}}, "unknown evaluation protocol 'probe'"),
    ({"evaluate": {"settings": {"knn_k": "x"}}}, "evaluate.settings"),
    ({"scheduler": {"type": "asha", "metric": "knn/k200_top1"}}, "reports every epoch"),
    ({"experiment": None}, "must name the pretraining config"),
    ({"extra": 1}, "extra: unknown key"),
    ({"search": {"space": {"loss.lambd": [0.1]}, "seeds": [0, "one"]}},
     "search.seeds[1]: expected an integer, got 'one'"),
    ({"search": {"space": {"loss.lambd": [0.1]}, "mod": "grid"}},
     "search.mod: unknown key in section 'search' (did you mean 'mode'?)"),
    ({"resources": {"max_concurrent_trials": 0}}, "resources.max_concurrent_trials: must be"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}},
     "scheduler.reduction_factor: must be >= 2"),
    ({"scheduler": {"type": "asha", "metric": "loss/total"}},       # the demo trains 1 epoch
     "scheduler.grace_period: 1 is not below the trials' 1 epochs"),
    ({"set": {"optimizer.lr_weights": {"a": 1}}}, "optimizer.lr_weights: a swept value must be"),
])
def test_bad_sweep_files(tmp_path, cifar_prepared, changes, message):
    path = _write(tmp_path, cifar_prepared, **changes)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(path)


def test_metrics_read_val(tmp_path, cifar_prepared):
    sweep = load_sweep(_write(tmp_path, cifar_prepared, metric="knn/val/k200_top1",
                              scheduler={"type": "asha"},
                              set={"data.dir": str(cifar_prepared), "data.subset": None,
                                   "batch_size": 64, "epochs": 2}))
    assert sweep.metric == "knn/val/k200_top1" and sweep.describe()["metric"] == sweep.metric
    assert sweep.scheduler["metric"] == "probe/val_top1"
    demo = yaml.safe_load((REPO / "experiments" / "sweep_cifar10_demo.yaml").read_text())
    assert demo["metric"] == "knn/val/k200_top1"


@pytest.mark.parametrize("metric, says", [
    ("knn/test/k200_top1", "reads the test split"),
    ("knn/k200_top1", "names no split"),  # the old spelling, before records had splits
])
def test_metric_on_test_is_refused_with_the_val_spelling(tmp_path, cifar_prepared, metric, says):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, cifar_prepared, metric=metric))
    message = str(err.value)
    assert message.startswith(f"metric: {metric!r} {says}")
    assert "selected on the validation split only, and test is for reporting" in message
    assert message.endswith("write metric: knn/val/k200_top1")


@pytest.mark.parametrize("metric, says", [
    ("semi-1pct/val/top1", ("this sweep runs no evaluation 'semi-1pct' (evaluate.protocols: "
                            "linear, knn); name one of: linear, knn")),
    ("transfer-/val/top1", "this sweep runs no evaluation 'transfer-'"),
    ("top1", "expected <eval>/val/<measure>"),
])
def test_metric_names_an_evaluation_of_the_sweep(tmp_path, cifar_prepared, metric, says):
    with pytest.raises(ConfigError, match=f"^metric: {metric!r}: {says}".replace("(", r"\(")
                       .replace(")", r"\)")):
        load_sweep(_write(tmp_path, cifar_prepared, metric=metric,
                          evaluate={"protocols": ["linear", "knn"]}))
    # (check_data=False: this file names no transfer data set, which loading refuses)
    transfer = load_sweep(_write(tmp_path, cifar_prepared, metric="transfer-tiny/val/top1",
                                 evaluate={"protocols": ["linear", "semi", "transfer"]}),
                          check_data=False)
    assert transfer.metric == "transfer-tiny/val/top1"


def test_old_probe_scheduler_metric_says_it_was_renamed(tmp_path, cifar_prepared):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, cifar_prepared, scheduler={"type": "asha", "metric": "probe/top1"}))
    message = str(err.value)
    assert message.startswith("scheduler.metric: 'probe/top1' was renamed probe/val_top1")
    assert "scored on the validation split" in message and "never reads the test set" in message
    assert message.endswith("write metric: probe/val_top1")


@pytest.mark.parametrize("metric", ["probe/test_top1", "knn/test/k200_top1"])
def test_test_scheduler_metric_is_refused(tmp_path, cifar_prepared, metric):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, cifar_prepared, scheduler={"type": "asha", "metric": metric}))
    message = str(err.value)
    assert message.startswith(f"scheduler.metric: {metric!r} reads the test split")
    assert "choices read the validation split only (test is for reporting)" in message
    assert message.endswith("choose one of: probe/val_top1, loss/total")


def test_uri_storage_works_locally_and_mirrors(tmp_path, cifar_prepared, monkeypatch):
    monkeypatch.setenv("BT_SWEEP_CACHE", str(tmp_path / "cache"))
    sweep = load_sweep(_write(tmp_path, cifar_prepared, storage_path=f"file://{tmp_path / 'bucket'}"))
    assert sweep.storage_uri == f"file://{tmp_path / 'bucket'}/s"
    assert sweep.run_dir == tmp_path / "cache" / "s"
    assert (tmp_path / "bucket" / "s").is_dir()  # opened and written before any trial


ABLATIONS = REPO / "experiments" / "ablations"


@pytest.mark.parametrize("name", ["lambda", "batch_size", "projector_width", "loss_terms",
                                  "augmentations"])
def test_every_ablation_file_validates(name):
    sweep = load_sweep(ABLATIONS / f"{name}.yaml", check_data=False)
    assert sweep.seeds == (0, 1, 2) and all(t.config.epochs == 300 for t in sweep.trials)
    assert sweep.eval_settings.linear_mode == "paper"
    if name == "augmentations":
        assert sweep.reference is None  # no published numbers in the reference notes
    else:
        assert sweep.reference["axis"] in sweep.space and sweep.reference["claims"]
    # The GPU-hour budget is stated at the top of the file: trials x about 1 GPU-hour.
    header = (ABLATIONS / f"{name}.yaml").read_text().split("\nbase:")[0]
    assert f"{len(sweep.trials)} trials" in header and "GPU-hours" in header


def test_a_group_sets_its_keys_together():
    sweep = load_sweep(ABLATIONS / "batch_size.yaml", check_data=False)
    by_batch = {t.params["batch"]: t for t in sweep.trials if t.params["seed"] == 0}
    assert list(by_batch) == ["128", "256", "512", "1024", "2048", "4096"]
    # The paper's table: each batch size with its learning rate, one trial per pair, no grid.
    for label, lr in (("128", 0.7), ("256", 0.4), ("4096", 0.2)):
        cfg = by_batch[label].config
        assert (cfg.batch_size, cfg.optimizer.lr_weights, cfg.optimizer.lr_biases) == \
            (int(label), lr, lr)
    assert by_batch["128"].params == {"batch": "128", "batch_size": 128,
                                      "optimizer.lr_weights": 0.7, "optimizer.lr_biases": 0.7,
                                      "seed": 0}
    assert sweep.reference["ours"] == "256" and sweep.reference["baseline"] == "2048"
    assert sweep.reference["values"]["128"] == 69.7

    terms = {t.params["variant"]: t.config
             for t in load_sweep(ABLATIONS / "loss_terms.yaml", check_data=False).trials}
    assert (terms["baseline"].loss.terms, terms["baseline"].loss.normalize,
            terms["baseline"].model.projector_bn) == ("both", "batch", True)
    assert terms["invariance only"].loss.terms == "invariance"
    assert terms["feature normalisation"].loss.normalize == "feature"
    assert terms["no projector BN"].model.projector_bn is False
    ce = terms["cross-entropy"].loss
    assert (ce.kind, ce.temperature, ce.lambd, ce.terms) == ("cross_entropy", 0.1, 1.0, "both")
    assert (terms["baseline"].loss.kind, terms["baseline"].loss.temperature) == ("barlow_twins", None)
    views = {t.params["variant"]: t.config.data.view_augments()
             for t in load_sweep(ABLATIONS / "augmentations.yaml", check_data=False).trials}
    assert all(v.crop_scale == (1.0, 1.0) and v.crop_ratio == (1.0, 1.0) for v in views["no crop"])
    assert [v.flip_p for v in views["no flip"]] == [0.0, 0.0]
    assert [v.flip_p for v in views["baseline"]] == [0.5, 0.5]


def _ablation(tmp_path, cifar_prepared, space, reference):
    return _write(tmp_path, cifar_prepared, search={"mode": "grid", "space": space, "seeds": [0]},
                  reference=reference)


@pytest.mark.parametrize("space, reference, message", [
    ({"variant": {"a": {"loss.lambd": 0.01}}, "loss.lambd": [0.002]}, None,
     "search.space.variant.a.loss.lambd: loss.lambd is also swept as its own axis"),
    ({"loss.terms": {"a": {"loss.lambd": 0.01}}}, None,
     "search.space.loss.terms: a group of named settings needs a name that is not a config key"),
    ({"variant": {"a": {"loss.terms": "neither"}}}, None, "loss.terms"),
    ({"loss.lambd": [0.002, 0.0051]}, {"source": "x", "axis": "batch_size", "claims": [{"flat": 1}]},
     "reference.axis: 'batch_size' is not swept"),
    ({"loss.lambd": [0.002, 0.0051], "batch_size": [32]},
     {"source": "x", "axis": "loss.lambd", "claims": [{"flat": 1}]},
     "an ablation sweeps its axis alone (and seeds), but search.space also sweeps batch_size"),
    ({"loss.lambd": [0.002, 0.02]}, {"source": "x", "axis": "loss.lambd", "claims": [{"flat": 1}]},
     "reference.ours: 0.0051 (the curve's own baseline) is not a point of the sweep"),
    ({"variant": {"a": {}, "b": {"loss.terms": "invariance"}}},
     {"source": "x", "axis": "variant", "claims": [{"flat": 1}]},
     "reference.ours: name the label of variant the others are compared with, one of: a, b"),
    ({"loss.lambd": [0.002, 0.0051]},
     {"source": "x", "axis": "loss.lambd", "values": {0.002: 70.0}, "baseline": 0.005,
      "claims": [{"flat": 1}]}, "reference.baseline: 0.005: name the paper's own point"),
    ({"loss.lambd": [0.002, 0.0051]},
     {"source": "x", "axis": "loss.lambd", "claims": [{"flat": 1, "point": 0.002}]},
     "reference.claims: {'flat': 1, 'point': 0.002}: expected one of"),
    ({"loss.lambd": [0.002, 0.0051]},
     {"source": "x", "axis": "loss.lambd", "claims": [{"point": 0.01, "within": 1}]},
     "0.01 is not a point of the sweep"),
    ({"loss.lambd": [0.002, 0.0051]}, {"axis": "loss.lambd", "claims": [{"flat": 1}]},
     "reference.source: required"),
])
def test_bad_groups_and_references_are_refused(tmp_path, cifar_prepared, space, reference, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(_ablation(tmp_path, cifar_prepared, space, reference))
    assert message in str(err.value)


def test_eval_set_and_trials_are_checked_before_ray_starts(tmp_path, cifar_prepared, capsys):
    from harness.cli import main

    path = _write(tmp_path, cifar_prepared)
    sweep = load_sweep(path, eval_overrides=["linear_mode=paper", "eval.test_images=100"])
    assert (sweep.eval_settings.linear_mode, sweep.eval_settings.test_images) == ("paper", 100)
    with pytest.raises(ConfigError, match="evaluate.settings: .*linear_epoch"):
        load_sweep(path, eval_overrides=["linear_epoch=3"])
    # An unknown trial id stops the command before anything runs or is written.
    assert main(["sweep", str(path), "--trials", "t0001", "t0042"]) == 2
    assert "--trials t0042: no such trial in sweep.yaml; it has t0000 .. t0007" in \
        capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_only_the_trials_a_run_trains_are_checked_against_the_data(cifar_prepared):
    """--trials: a smoke run of batch_size.yaml's batch-256 trial on 360 images; the file's
    4096 needs more images than the data set has, and is refused as soon as a run trains it."""
    path = ABLATIONS / "batch_size.yaml"
    overrides = [f"data.dir={cifar_prepared}", "data.subset=null"]
    sweep = load_sweep(path, overrides=overrides, only=["t0001"])
    assert len(sweep.trials) == 18 and sweep.trials[1].config.batch_size == 256
    with pytest.raises(ConfigError, match=r"trial t0005 .*fewer than its batch of 4096"):
        load_sweep(path, overrides=overrides, only=["t0001", "t0005"])
    with pytest.raises(ConfigError, match=r"trial t0002 .*fewer than its batch of 512"):
        load_sweep(path, overrides=overrides)  # every trial: the first too large is named
    with pytest.raises(ConfigError, match=r"--trials t0018: no such trial in batch_size.yaml; "
                                          r"it has t0000 .. t0017"):
        load_sweep(path, overrides=overrides, only=["t0018"])


def test_several_files_are_all_checked_before_any_runs(tmp_path, cifar_prepared, capsys):
    from harness.cli import main

    good = _write(tmp_path, cifar_prepared)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("name: s", "name: b")
                   .replace("loss.lambd:", "loss.lambda:"))
    assert main(["sweep", str(good), str(bad)]) == 2
    assert "loss.lambda" in capsys.readouterr().err
    # --name names one sweep; two files of one name would write one folder.
    assert main(["sweep", str(good), str(ABLATIONS / "lambda.yaml"), "--name", "x"]) == 2
    assert "--name x: names one sweep, but 2 files are given" in capsys.readouterr().err
    same = tmp_path / "same.yaml"
    same.write_text(good.read_text())
    assert main(["sweep", str(good), str(same)]) == 2
    assert "two of the files are one sweep in" in capsys.readouterr().err
    assert main(["sweep", str(good), str(ABLATIONS / "lambda.yaml"), "--trials", "t0012"]) == 2
    assert "--trials t0012: no such trial in sweep.yaml; it has t0000 .. t0007" in \
        capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_sweeps_without_a_scheduler_and_of_one_concurrency_share_a_tune_run():
    """harness.sweep.run._tune_runs: several files' trials side by side where they can be; a
    sweep with ASHA alone (its scheduler compares one sweep's trials), and one that runs
    another number of trials at a time alone; a sweep with nothing to run in none."""
    from types import SimpleNamespace

    from harness.sweep.run import _tune_runs

    plain, asha = SimpleNamespace(scheduler=None), SimpleNamespace(scheduler={"type": "asha"})
    sweeps = [plain, asha, plain, plain, plain, plain, asha]
    todo = [["t"], ["t"], ["t"], [], ["t"], ["t"], ["t"]]
    concurrency = [2, 2, 2, 2, 1, 2, 2]
    assert _tune_runs(sweeps, todo, concurrency) == [[0, 2, 5], [1], [4], [6]]


@pytest.mark.parametrize("evaluate, message", [
    ({"protocols": ["semi"], "settings": {"semi_subsets": "5pct"}},
     r"evaluate: .*no label subset '5pct'"),
    ({"protocols": ["transfer"], "transfer": ["SELF"]},
     r"evaluate: .* was prepared from the same images as the pretraining data set"),
    ({"protocols": ["linear", "transfer"], "transfer": ["MISSING"]},
     r"evaluate: .*missing does not exist: give a folder written by `harness prep`"),
])
def test_what_the_trials_evaluate_on_is_checked_before_any_trains(tmp_path, cifar_prepared,
                                                                  capsys, evaluate, message):
    """The evaluation runs after each trial has trained: its data sets are read now."""
    from harness.cli import main

    evaluate = {**evaluate, "transfer": [{"SELF": str(cifar_prepared),
                                          "MISSING": str(tmp_path / "missing")}[d]
                                         for d in evaluate.get("transfer", [])]}
    path = _write(tmp_path, cifar_prepared, evaluate=evaluate, metric=None)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)
    assert main(["sweep", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "sweeps").exists()
    load_sweep(path, check_data=False)  # the file itself is fine
