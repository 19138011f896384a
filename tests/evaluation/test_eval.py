"""Evaluation protocols on real CIFAR-10 images: references, label hygiene, bad input."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import prepare
from harness.checkpoint import write_export
from harness.cli import main
from harness.config import load_config
from harness.data import labelled_loader
from harness.evaluation import EvalSettings, evaluate, load_backbone, plan, random_backbone
from harness.evaluation.data import beton_labels, indices_digest
from harness.evaluation.features import extract_features, extract_parts
from harness.evaluation.finetune import finetune
from harness.evaluation.knn import knn_votes
from harness.evaluation.linear import L2_GRID, _standardise, fit_logistic, linear_fast
from harness.model import BarlowTwins

REPO = Path(__file__).resolve().parents[2]
RES = 16  # small crops keep the CPU forward passes cheap; the protocols do not care
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tiny_imagenet_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_eval")
    prepare(str(tiny_imagenet_folder), out, split_from="val", num_workers=2, progress=False)
    return out


def _export(model: BarlowTwins, data_dir: Path, out: Path, arch="resnet18") -> Path:
    cfg = load_config(REPO / "experiments" / "cifar10_cpu.yaml",
                      [f"data.dir={data_dir}", f"data.resolution={RES}", f"model.arch={arch}"],
                      check_data=False)
    return write_export(model, cfg.to_dict(), out, step=0, epoch=0)


@pytest.fixture(scope="module")
def export_dir(cifar_prepared, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = BarlowTwins.from_arch("resnet18", "512-512", small_image_stem=True)
    return _export(model, cifar_prepared, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def features(export_dir, cifar_prepared):
    """Real backbone features of the 400 train / 100 test images."""
    backbone = load_backbone(export_dir)
    out = {}
    for split in ("train", "test"):
        out[split] = extract_features(backbone.module, cifar_prepared / f"{split}.beton", indices=None,
                                      resolution=RES, batch_size=100, device=torch.device("cpu"),
                                      num_workers=1)
    return out


def test_parts_of_one_file_share_a_loader_and_keep_their_order(export_dir, cifar_prepared,
                                                                features, monkeypatch):
    """train and the validation list carved from it come from one pass over train.beton (one
    FFCV compile), each part in its own image order: the rows of the whole-split features (the
    fixture's, one loader a split) at the part's indices, and the part's labels."""
    import harness.evaluation.features as module
    from harness.evaluation.data import EvalData

    loaders, real = [], module.eval_loader
    monkeypatch.setattr(module, "eval_loader",
                        lambda path, **kw: loaders.append(Path(path).name) or real(path, **kw))
    data = EvalData.open(cifar_prepared, EvalSettings(train_images=150, val_images=30), RES)
    parts = [data.part(role) for role in ("val", "train", "test")]
    assert parts[0].indices is not None and parts[1].indices is not None
    backbone = load_backbone(export_dir)
    got = extract_parts(backbone.module, parts, resolution=RES, batch_size=64,
                        device=torch.device("cpu"), num_workers=1)
    assert sorted(loaders) == ["test.beton", "train.beton"]
    for part in parts:
        whole_f, whole_y = features[part.split]
        rows = torch.arange(len(whole_y)) if part.indices is None else \
            torch.from_numpy(np.asarray(part.indices))
        f, y = got[part.role]
        assert y.tolist() == part.labels.tolist() == whole_y[rows].tolist()
        torch.testing.assert_close(f, whole_f[rows], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [20, 200])
def test_knn_agrees_with_sklearn(features, k):
    from sklearn.neighbors import KNeighborsClassifier

    (train_f, train_y), (test_f, test_y) = features["train"], features["test"]
    ours = knn_votes(train_f, train_y, test_f, k=k, temperature=0.07, num_classes=10).argmax(1)
    # Cosine distance d = 1 - similarity: the weight exp(similarity / T).
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1 - d) / 0.07))
    theirs = reference.fit(train_f.numpy(), train_y.numpy()).predict(test_f.numpy())
    assert (ours.numpy() == theirs).mean() >= 0.99
    assert abs((ours == test_y).float().mean().item() - (theirs == test_y.numpy()).mean()) <= 0.01


def test_fast_linear_agrees_with_sklearn(features):
    from sklearn.linear_model import LogisticRegression

    (train_f, train_y), (test_f, test_y) = features["train"], features["test"]
    train_x, test_x = _standardise(train_f, test_f)
    l2 = 1e-2
    weight, bias = fit_logistic(train_x, train_y, 10, l2)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2: the same optimum for C = 1 / (n * l2).
    reference = LogisticRegression(C=1 / (len(train_y) * l2), tol=1e-10, max_iter=20000)
    reference.fit(train_x.numpy(), train_y.numpy())

    def objective(w, b):
        logits = train_x.double() @ w.double() + b.double()
        return float(torch.nn.functional.cross_entropy(logits, train_y) + 0.5 * l2 * w.double().pow(2).sum())

    ours_obj = objective(weight, bias)
    theirs_obj = objective(torch.from_numpy(reference.coef_.T.copy()),
                           torch.from_numpy(reference.intercept_.copy()))
    assert ours_obj == pytest.approx(theirs_obj, rel=1e-3)
    ours = (test_x @ weight + bias).argmax(1).numpy()
    assert (ours == reference.predict(test_x.numpy())).mean() >= 0.98
    metrics, used = linear_fast(features["train"], features["test"], features["test"],
                                num_classes=10, l2=l2)
    score = reference.score(test_x.numpy(), test_y.numpy())
    assert metrics["test/top1"] == pytest.approx(score, abs=0.02)
    assert metrics["val/top1"] == metrics["test/top1"]  # here both are the test features
    assert (used["l2"], used["l2_chosen_on"]) == (l2, "given")
    assert 0.0 <= used["train_top1"] <= 1.0


def test_fast_linear_chooses_its_l2_on_val(features):
    """The penalty is the grid's best on the val set it is given, whatever test says: planted
    as val = the training images themselves, the least penalised fit (it memorises) wins."""
    _, used = linear_fast(features["train"], features["train"], features["test"],
                          num_classes=10, l2=None)
    scores = used["l2_val_top1"]
    assert used["l2_chosen_on"] == "val" and set(scores) == {str(p) for p in L2_GRID}
    assert used["l2"] == L2_GRID[0] and scores[str(L2_GRID[0])] == max(scores.values())
    _, used = linear_fast(features["train"], features["test"], features["test"],
                          num_classes=10, l2=None)
    best = max(used["l2_val_top1"].values())
    assert used["l2_val_top1"][str(used["l2"])] == best


def test_labelled_loader_reads_exactly_the_given_indices(cifar_prepared):
    labels = beton_labels(cifar_prepared / "train.beton")
    chosen = np.flatnonzero(np.isin(labels, [0, 3]))[::3]  # an unbalanced pick of two classes
    loader = labelled_loader(cifar_prepared / "train.beton", batch_size=len(chosen), resolution=RES,
                             device="cpu", num_workers=1, indices=chosen, distributed=False)
    seen = Counter(y for _, batch in loader for y in batch.tolist())
    assert seen == Counter(labels[chosen].tolist())


def test_semi_fine_tunes_on_exactly_the_subset_list(export_dir, cifar_prepared):
    backbone = load_backbone(export_dir)
    # Batches of 16 over 40 images: with drop_last, 8 of them would be left out each epoch.
    settings = EvalSettings(semi_epochs=1, loader_workers=1, test_images=50, batch_size=16)
    data = plan(backbone, ["semi"], cifar_prepared, settings=settings).data
    before = {k: v.clone() for k, v in backbone.module.state_dict().items()}
    metrics, used = finetune(backbone.module, backbone.feature_dim, data, "10pct",
                             settings=settings, device=torch.device("cpu"))
    subset = np.array((cifar_prepared / "subset_10pct.txt").read_text().split(), dtype=np.int64)
    labels = beton_labels(cifar_prepared / "train.beton")
    assert used["train_images"] == len(subset) == 40
    assert used["train_indices_sha256"] == indices_digest(subset)
    assert used["first_epoch_labels"] == dict(Counter(labels[subset].tolist()))
    assert used["first_epoch_images"] == 40 and used["batch_size"] == 14  # 14 + 14 + 12
    val = np.array((cifar_prepared / "val.txt").read_text().split(), dtype=np.int64)
    assert not set(subset) & set(val)  # prep drew the subset outside the validation list
    for split in ("val", "test"):
        assert 0.0 <= metrics[f"{split}/top1"] <= metrics[f"{split}/top5"] <= 1.0
    # The caller's backbone is not the one fine-tuned.
    assert all(torch.equal(before[k], v) for k, v in backbone.module.state_dict().items())


def test_transfer_never_touches_the_pretraining_data(export_dir, cifar_prepared, tiny_data):
    backbone = load_backbone(export_dir)
    with pytest.raises(ValueError, match="same images as the pretraining data set"):
        plan(backbone, ["transfer"], None, transfer_dirs=[cifar_prepared], settings=EvalSettings())
    settings = EvalSettings(loader_workers=1, linear_l2=1e-3)
    records = evaluate(backbone, ["transfer"], None, transfer_dirs=[tiny_data], settings=settings)
    (record,) = records
    assert record["name"] == f"transfer-{tiny_data.name}" and record["protocol"] == "transfer"
    pretraining = json.loads((cifar_prepared / "manifest.json").read_text())["fingerprint"]
    assert record["data"]["fingerprint"] != pretraining
    assert record["data"]["dir"] == str(tiny_data)
    assert record["data"]["resolution"] == RES  # 64 px images resized to the training crop


def test_eval_command_writes_complete_records(export_dir, cifar_prepared, tmp_path, capsys):
    out = tmp_path / "records"
    code = main(["eval", str(export_dir), "--protocol", "linear", "knn", "--data", str(cifar_prepared),
                 "--out", str(out), "--set", "loader_workers=1", "--set", "knn_k=5,20"])
    assert code == 0, capsys.readouterr().err
    for folder, init in ((out, "pretrained"), (out / "baseline", "random")):
        linear = json.loads((folder / "linear.json").read_text())
        knn = json.loads((folder / "knn.json").read_text())
        assert linear["init"] == knn["init"] == init
        assert set(knn["metrics"]) == {f"{split}/k{k}_top{t}" for split in ("val", "test")
                                       for k in (5, 20) for t in (1, 5)}
        assert knn["primary"] == "k20_top1"
        assert set(linear["metrics"]) == {"val/top1", "val/top5", "test/top1", "test/top5"}
        assert linear["settings"]["l2_chosen_on"] == "val"
        for record in (linear, knn):
            # 40 train images per class: 4 of them are the validation list, never fitted on.
            data = record["data"]
            assert (data["train_images"], data["val_images"], data["test_images"]) == \
                (360, 40, 100)
            assert record["checkpoint"]["arch"] == "resnet18"
            assert record["checkpoint"]["config"]["model"]["projector"] == "512-512"
            assert record["versions"]["torch"] and record["hardware"]["cpus"] >= 1
            assert record["seed"] == 0 and record["wall_time_s"] >= 0
            assert "git" in record and record["settings"]["knn_k"] == "5,20"


def test_no_fit_sees_a_val_image(export_dir, cifar_prepared):
    """Memorisation tells: a 1-NN whose bank held the val images would find each one itself
    (val top-1 1.0), and a nearly unpenalised linear fit that trained on them would score on
    val what it scores on its training images. Neither may happen; test is another split."""
    backbone = load_backbone(export_dir)
    settings = EvalSettings(loader_workers=1, knn_k="1", linear_l2=1e-6)
    linear, knn = evaluate(backbone, ["linear", "knn"], cifar_prepared, settings=settings)
    assert knn["metrics"]["val/k1_top1"] < 0.8, knn["metrics"]
    train_top1 = linear["settings"]["train_top1"]
    assert train_top1 > 0.9  # it can memorise what it trains on ...
    assert linear["metrics"]["val/top1"] < train_top1 - 0.3, (linear["metrics"], train_top1)
    data = plan(backbone, ["linear"], cifar_prepared, settings=settings).data
    fitted = set(data.part("train").indices.tolist())
    val = np.array((cifar_prepared / "val.txt").read_text().split(), dtype=np.int64)
    assert data.part("val").split == "train" and set(data.part("val").indices) == set(val)
    assert not fitted & set(val) and len(fitted | set(val)) == 400
    assert data.part("test").split == "test"


def test_random_backbone_is_the_initial_weights(export_dir):
    backbone = load_backbone(export_dir)
    a, b = random_backbone(backbone, seed=3), random_backbone(backbone, seed=3)
    assert a.init == "random" and a.arch == backbone.arch
    assert all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(),
                                                 b.module.state_dict().values()))


# --- bad input: a clear error before any work ----------------------------------------------

def test_weights_of_another_architecture_are_refused(cifar_prepared, tmp_path):
    model = BarlowTwins.from_arch("resnet34", "512-512", small_image_stem=True)
    out = _export(model, cifar_prepared, tmp_path / "export")
    info = json.loads((out / "export.json").read_text())
    info["arch"] = "resnet18"  # the record says one architecture, the weights are another
    (out / "export.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="another architecture"):
        load_backbone(out)


def test_expected_architecture_is_checked(export_dir):
    with pytest.raises(ValueError, match="resnet18 backbone, not the resnet50"):
        load_backbone(export_dir, expect_arch="resnet50")


def test_missing_subset_list_fails_before_work(export_dir, cifar_prepared, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(cifar_prepared, broken)
    (broken / "subset_1pct.txt").unlink()
    with pytest.raises(ValueError, match="subset_1pct.txt"):
        plan(load_backbone(export_dir), ["linear", "semi"], broken, settings=EvalSettings())


def test_resolution_that_does_not_fit_the_data(export_dir, cifar_prepared):
    with pytest.raises(ValueError, match="upsample"):
        plan(load_backbone(export_dir), ["knn"], cifar_prepared,
             settings=EvalSettings(resolution=224))


@pytest.mark.parametrize("args, message", [
    (["--protocol", "linaer"], "unknown evaluation protocol 'linaer'"),
    (["--protocol", "transfer"], "needs at least one other data set"),
    (["--protocol", "knn", "--set", "knn_k=0"], "every k must be >= 1"),
    (["--protocol", "knn", "--set", "linear_mode=slow"], "linear_mode"),
])
def test_eval_command_bad_input(export_dir, cifar_prepared, args, message, capsys):
    assert main(["eval", str(export_dir), "--data", str(cifar_prepared), *args]) == 2
    assert message in capsys.readouterr().err


def test_data_dir_that_is_not_prepared(export_dir, tmp_path, capsys):
    assert main(["eval", str(export_dir), "--protocol", "knn", "--data", str(tmp_path)]) == 2
    assert "harness prep" in capsys.readouterr().err
