"""Sweep files: the trial list they expand to, and the errors they give before Ray starts."""

from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError
from harness.sweep_config import load_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(cifar_prepared) -> Path:
    return cifar_prepared


def _write(tmp_path: Path, data_dir: Path, **changes) -> Path:
    raw = {"name": "s", "experiment": str(REPO / "experiments" / "cifar10_demo.yaml"),
           "storage_path": str(tmp_path / "sweeps"),
           "set": {"data.dir": str(data_dir), "data.subset": "null", "batch_size": 64},
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


def test_grid_expands_every_point_per_seed(tmp_path, data_dir):
    sweep = load_sweep(_write(tmp_path, data_dir))
    assert [t.trial_id for t in sweep.trials] == [f"t{i:04d}" for i in range(8)]
    assert sweep.trials[0].params == {"loss.lambd": 0.002, "model.projector": "64-64", "seed": 0}
    assert sweep.trials[7].params == {"loss.lambd": 0.02, "model.projector": "128-128", "seed": 1}
    cfg = sweep.trials[7].config
    assert (cfg.loss.lambd, cfg.model.projector, cfg.seed, cfg.batch_size) == (0.02, "128-128", 1, 64)
    assert cfg.data.subset is None
    assert cfg.run.run_dir == tmp_path / "sweeps" / "s" / "trials" / "t0007" / "pretrain"


def test_random_search_is_seeded_and_in_bounds(tmp_path, data_dir):
    search = {"mode": "random", "num_samples": 5, "seed": 3,
              "space": {"loss.lambd": {"loguniform": [1e-3, 1e-1]},
                        "batch_size": [32, 64], "optimizer.lr_weights": {"uniform": [0.1, 0.5]}}}
    first = load_sweep(_write(tmp_path, data_dir, search=search))
    again = load_sweep(_write(tmp_path, data_dir, search=search))
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
])
def test_bad_sweep_files(tmp_path, data_dir, changes, message):
    path = _write(tmp_path, data_dir, **changes)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(path)


def test_metrics_read_val(tmp_path, data_dir):
    sweep = load_sweep(_write(tmp_path, data_dir, metric="knn/val/k200_top1",
                              scheduler={"type": "asha"}))
    assert sweep.metric == "knn/val/k200_top1" and sweep.describe()["metric"] == sweep.metric
    assert sweep.scheduler["metric"] == "probe/val_top1"
    demo = yaml.safe_load((REPO / "experiments" / "sweep_cifar10_demo.yaml").read_text())
    assert demo["metric"] == "knn/val/k200_top1"


@pytest.mark.parametrize("metric, says", [
    ("knn/test/k200_top1", "reads the test split"),
    ("knn/k200_top1", "names no split"),  # the old spelling, before records had splits
])
def test_metric_on_test_is_refused_with_the_val_spelling(tmp_path, data_dir, metric, says):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, data_dir, metric=metric))
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
def test_metric_names_an_evaluation_of_the_sweep(tmp_path, data_dir, metric, says):
    with pytest.raises(ConfigError, match=f"^metric: {metric!r}: {says}".replace("(", r"\(")
                       .replace(")", r"\)")):
        load_sweep(_write(tmp_path, data_dir, metric=metric,
                          evaluate={"protocols": ["linear", "knn"]}))
    transfer = load_sweep(_write(tmp_path, data_dir, metric="transfer-tiny/val/top1",
                                 evaluate={"protocols": ["linear", "semi", "transfer"]}))
    assert transfer.metric == "transfer-tiny/val/top1"


def test_old_probe_scheduler_metric_says_it_was_renamed(tmp_path, data_dir):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, data_dir, scheduler={"type": "asha", "metric": "probe/top1"}))
    message = str(err.value)
    assert message.startswith("scheduler.metric: 'probe/top1' was renamed probe/val_top1")
    assert "scored on the validation split" in message and "never reads the test set" in message
    assert message.endswith("write metric: probe/val_top1")


@pytest.mark.parametrize("metric", ["probe/test_top1", "knn/test/k200_top1"])
def test_test_scheduler_metric_is_refused(tmp_path, data_dir, metric):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, data_dir, scheduler={"type": "asha", "metric": metric}))
    message = str(err.value)
    assert message.startswith(f"scheduler.metric: {metric!r} reads the test split")
    assert "choices read the validation split only (test is for reporting)" in message
    assert message.endswith("choose one of: probe/val_top1, loss/total")


def test_uri_storage_works_locally_and_mirrors(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("BT_SWEEP_CACHE", str(tmp_path / "cache"))
    sweep = load_sweep(_write(tmp_path, data_dir, storage_path=f"file://{tmp_path / 'bucket'}"))
    assert sweep.storage_uri == f"file://{tmp_path / 'bucket'}/s"
    assert sweep.run_dir == tmp_path / "cache" / "s"
    assert (tmp_path / "bucket" / "s").is_dir()  # opened and written before any trial
