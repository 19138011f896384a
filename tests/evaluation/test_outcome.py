"""The evaluation a run's rank 0 makes after training: its outcome file, read by the driver."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.checkpoint import write_export
from harness.config import load_config
from harness.evaluation import EvalSettings, evaluate, load_backbone
from harness.evaluation.remote import (OUTCOME_FILE, EvalRequest, EvaluationError, clear_outcome,
                                       evaluate_run, read_outcome)
from harness.model import BarlowTwins

REPO = Path(__file__).resolve().parents[2]
RES = 16  # small crops keep the CPU forward passes cheap


def test_outcome_holds_the_records_evaluate_gives(cifar_prepared, tmp_path):
    torch.manual_seed(0)
    model = BarlowTwins.from_arch("resnet18", "64-64", small_image_stem=True)
    cfg = load_config(REPO / "experiments" / "cifar10_cpu.yaml",
                      [f"data.dir={cifar_prepared}", f"data.resolution={RES}"], check_data=False)
    run = write_export(model, cfg.to_dict(), tmp_path / "export", step=3, epoch=1)
    settings = EvalSettings(loader_workers=1, knn_k="5", train_images=100, val_images=20,
                            test_images=20)
    request = EvalRequest.from_dict(json.loads(json.dumps(
        EvalRequest.of(["knn"], settings).to_dict())))  # as it travels to a worker
    threads = torch.get_num_threads()
    try:
        written = evaluate_run(run, request, str(cifar_prepared), threads=1)
        reference = evaluate(load_backbone(run), ["knn"], cifar_prepared, settings=settings)
    finally:
        torch.set_num_threads(threads)
    outcome = read_outcome(run)
    assert outcome == written and outcome["error"] is None and outcome["wall_s"] > 0
    assert [(r["init"], r["name"]) for r in outcome["records"]] == [("pretrained", "knn")]
    assert [r["metrics"] for r in outcome["records"]] == [r["metrics"] for r in reference]
    assert outcome["records"][0]["checkpoint"]["epoch"] == 1


@pytest.mark.parametrize("uri", [False, True], ids=["folder", "file-uri"])
def test_a_failed_evaluation_is_the_outcome_and_a_cleared_one_is_missing(tmp_path, uri):
    run = tmp_path / "run"
    run.mkdir()
    location = f"file://{run}" if uri else run
    request = EvalRequest.of(["knn"], EvalSettings())
    outcome = evaluate_run(location, request, None)
    assert outcome["records"] == [] and outcome["error"].startswith("FileNotFoundError: ")
    assert "holds no checkpoint" in outcome["error"]
    with pytest.raises(EvaluationError, match="holds no checkpoint"):
        read_outcome(location)
    clear_outcome(location)
    assert not (run / OUTCOME_FILE).exists()
    with pytest.raises(EvaluationError, match=f"wrote no {OUTCOME_FILE}"):
        read_outcome(location)
    clear_outcome(location)  # nothing there: no error
    shutil.rmtree(run)


def test_a_request_names_a_bad_init():
    with pytest.raises(ValueError, match="init='best'"):
        EvalRequest.of(["knn"], EvalSettings(), init="best")
