"""harness.config: the experiment files, overrides, and every rejection naming its key."""

import os
import re
import sys
from pathlib import Path

import pytest

from processes import guard, run_tree

from harness.config import ConfigError, PretrainConfig, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"


def cpu_recipe(cifar_prepared: Path, *overrides: str, **kwargs) -> PretrainConfig:
    """The CPU recipe on the 400-image test subset (its 10% list has only 40 images)."""
    return load_config(EXPERIMENTS / "cifar10_cpu.yaml",
                       [f"data.dir={cifar_prepared}", "data.subset=null", *overrides], **kwargs)


# Sweep files (sweep_*.yaml) and what sweep files start from (*_base.yaml: ablation_base.yaml,
# which tests/sweep/test_sweep_config.py checks through every ablation file) aside.
@pytest.mark.parametrize("path", sorted(set(EXPERIMENTS.glob("*.yaml"))
                                        - set(EXPERIMENTS.glob("sweep_*.yaml"))
                                        - set(EXPERIMENTS.glob("*_base.yaml"))),
                         ids=lambda p: p.name)
def test_every_experiment_file_loads_and_validates(path):
    cfg = load_config(path, check_data=False)
    assert cfg.run.name == path.stem
    assert Path(cfg.data.dir).is_absolute() and Path(cfg.run.storage_path).is_absolute()
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg  # what workers and checkpoints rebuild


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("sweep_*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_loads_and_validates(path):
    from harness.sweep.config import load_sweep

    sweep = load_sweep(path, check_data=False)
    assert len(sweep.trials) >= 4 and sweep.protocols


def test_paper_recipe_is_the_papers():
    cfg = load_config(EXPERIMENTS / "imagenet_paper.yaml", check_data=False)
    assert (cfg.model.arch, cfg.model.small_image_stem, cfg.model.projector) == \
        ("resnet50", False, "8192-8192-8192")
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs) == (2048, 1000, 10)
    assert (cfg.loss.lambd, cfg.loss.scale) == (0.0051, 1.0)
    o = cfg.optimizer
    assert (o.name, o.lr_weights, o.lr_biases, o.eta, o.momentum) == ("lars", 0.2, 0.0048, 0.001, 0.9)
    assert o.weight_decay in (1e-6, 1.5e-6)
    assert cfg.data.views == "imagenet" and cfg.data.resolution == 224 and cfg.workers.use_gpu


def test_cifar_recipes_share_one_base():
    full = load_config(EXPERIMENTS / "cifar10.yaml", check_data=False)
    assert (full.model.arch, full.model.small_image_stem, full.model.projector) == \
        ("resnet18", True, "2048-2048-2048")
    assert (full.batch_size, full.epochs, full.loss.scale, full.loss.lambd) == (256, 1000, 0.1, 0.0051)
    assert (full.optimizer.eta, full.optimizer.lr_weights, full.optimizer.weight_decay) == \
        (0.02, 0.3, 1e-4)
    assert full.data.views == "cifar" and full.data.resolution == 32
    cpu = load_config(EXPERIMENTS / "cifar10_cpu.yaml", check_data=False)
    # Inherited through `base:`, not copied.
    assert (cpu.optimizer, cpu.loss, cpu.model.small_image_stem) == \
        (full.optimizer, full.loss, True)
    assert not cpu.workers.use_gpu and cpu.workers.num_workers * cpu.workers.cpus_per_worker <= 2
    assert "base" in (EXPERIMENTS / "cifar10_cpu.yaml").read_text()


def test_overrides_are_dotted_and_coerced_to_the_declared_type(cifar_prepared):
    cfg = cpu_recipe(cifar_prepared, "optimizer.lr_weights=0.25", "batch_size=64",
                     "model.small_image_stem=false", "data.view_b.solarize_p=0.1",
                     "run.debug_exit_at_step=null", "optimizer.weight_decay=1e-5",
                     "model.projector=512", "epochs=4", name="renamed",
                     storage_path="somewhere")
    assert cfg.optimizer.lr_weights == 0.25 and cfg.batch_size == 64 and cfg.epochs == 4
    assert cfg.model.small_image_stem is False and cfg.run.debug_exit_at_step is None
    assert cfg.optimizer.weight_decay == 1e-5  # no dot: YAML 1.1 would read a string
    assert cfg.model.projector == "512"        # a string field keeps the text
    assert cfg.data.view_augments()[1].solarize_p == 0.1
    assert cfg.run.name == "renamed" and cfg.run.storage_path == str(Path("somewhere").resolve())
    assert cfg.per_worker_batch == 32


def test_yaml_exponent_without_dot_is_a_number(tmp_path, cifar_prepared):
    path = tmp_path / "x.yaml"
    path.write_text(f"base: {EXPERIMENTS / 'cifar10_cpu.yaml'}\ndata: {{dir: {cifar_prepared}, "
                    "subset: null}\noptimizer: {weight_decay: 1e-4}\n")
    assert load_config(path).optimizer.weight_decay == 1e-4


BAD = [
    # (overrides, key the message must name)
    (["batchsize=256"], "batchsize"),                       # unknown key, top level
    (["optimizer.lr=0.1"], "optimizer.lr"),                 # unknown key, in a section
    (["epochs=ten"], "epochs"),                             # wrong type
    (["epochs=1.5"], "epochs"),
    (["model.small_image_stem=maybe"], "model.small_image_stem"),
    (["loss.lambd=fast"], "loss.lambd"),
    (["batch_size=127"], "batch_size"),                     # not divisible by 2 workers
    (["batch_size=2"], "batch_size"),                       # 1 image per worker: no BN
    (["model.projector=8192-x"], "model.projector"),
    (["model.projector=8192--8192"], "model.projector"),
    (["model.projector=0-128"], "model.projector"),
    (["loss.lambd=0"], "loss.lambd"),
    (["loss.terms=off_diagonal"], "loss.terms"),
    (["loss.normalize=layer"], "loss.normalize"),
    (["loss.kind=infonce"], "loss.kind"),
    (["loss.kind=cross_entropy"], "loss.temperature"),      # the variant needs its temperature
    (["loss.kind=cross_entropy", "loss.temperature=0"], "loss.temperature"),
    (["loss.kind=cross_entropy", "loss.temperature=0.1", "loss.terms=invariance"], "loss.terms"),
    (["loss.temperature=0.1"], "loss.temperature"),         # without kind: cross_entropy
    (["model.projector_bn=maybe"], "model.projector_bn"),
    (["loss.lambd=-0.005"], "loss.lambd"),
    (["loss.scale=0"], "loss.scale"),
    (["warmup_epochs=9", "epochs=3"], "warmup_epochs"),
    (["model.arch=vit"], "model.arch"),
    (["data.views=strong"], "data.views"),
    (["data.view_a.blurr_p=0.5"], "data.view_a.blurr_p"),
    (["data.view_b.solarize_p=1.5"], "data.view_b"),
    (["optimizer.name=adam"], "optimizer.name"),
    (["optimizer.momentum=1"], "optimizer.momentum"),
    (["workers.num_workers=0"], "workers.num_workers"),
    (["workers.placement=spread_out"], "workers.placement"),
    (["run.name=a/b"], "run.name"),
    (["run.storage_path=s4://bucket/runs"], "run.storage_path"),  # a typo'd scheme
    (["run.max_failures=0", "run.debug_exit_at_step=3"], "run.debug_exit_at_step"),
    (["data.resolution=4"], "data.resolution"),
    (["batch_size=512"], "batch_size"),                     # 400 images: 200 per worker < 256
    (["data.subset=10pct"], "batch_size"),                  # 40 images: 20 per worker < 64
    (["data.subset=50pct"], "data.subset"),
    (["data.eval_split=val"], "data.eval_split"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_rejected_naming_the_key(cifar_prepared, overrides, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}\b"):
        cpu_recipe(cifar_prepared, *overrides)


def test_bad_lars_variant_is_rejected_naming_the_key_and_choices():
    with pytest.raises(ConfigError, match=r"^optimizer\.lars_variant: 'solo'.*barlowtwins, "
                                          r"solo-learn"):
        load_config(EXPERIMENTS / "cifar10.yaml", ["optimizer.lars_variant=solo"],
                    check_data=False)


def test_unknown_key_suggests_the_known_one(cifar_prepared):
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        cpu_recipe(cifar_prepared, "batchsize=256")


def test_missing_data_is_rejected_naming_data_dir(tmp_path, cifar_prepared):
    with pytest.raises(ConfigError, match=r"^data\.dir: .* does not exist"):
        load_config(EXPERIMENTS / "cifar10_cpu.yaml", [f"data.dir={tmp_path / 'nothing'}"])
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match=r"^data\.dir: .*no manifest\.json.*harness prep"):
        load_config(EXPERIMENTS / "cifar10_cpu.yaml", [f"data.dir={tmp_path / 'half'}"])


def test_missing_required_key_and_bad_files(tmp_path):
    (tmp_path / "a.yaml").write_text("batch_size: 8\nepochs: 1\n")
    with pytest.raises(ConfigError, match=r"^data: is required"):
        load_config(tmp_path / "a.yaml", check_data=False)
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "b.yaml", check_data=False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_local_resources_are_checked_before_ray(cifar_prepared):
    from harness.pretrain.driver import check_local_resources
    cores = len(os.sched_getaffinity(0))
    cfg = cpu_recipe(cifar_prepared, f"workers.num_workers={cores + 1}", f"batch_size={2 * (cores + 1)}")
    with pytest.raises(ConfigError, match=r"^workers\.num_workers: .*CPUs"):
        check_local_resources(cfg)


def test_cli_rejects_a_bad_config_before_ray_starts(cifar_prepared, tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = run_tree(
        [sys.executable, "-m", "harness.cli", "pretrain", str(EXPERIMENTS / "cifar10_cpu.yaml"),
         "--set", f"data.dir={cifar_prepared}", "--set", "data.subset=null", "--set", "batch_size=127",
         "--storage", str(tmp_path / "runs")], timeout=guard(20), env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stdout
    assert "batch_size" in proc.stdout and "multiple of 2" in proc.stdout
    assert "Ray instance" not in proc.stdout  # the error came before Ray started
    assert not (tmp_path / "runs").exists()
