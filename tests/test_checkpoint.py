"""harness.checkpoint: the state file round trip and the export torchvision loads (no Ray)."""

import json

import torch
import torchvision

from harness import storage
from harness.checkpoint import (CONFIG_FILE, STATE_FILE, checkpoint_dir_name, export_checkpoint,
                                latest_checkpoint, load_state, save_state, saved_config)
from harness.cli import main as cli_main
from harness.model import BarlowTwins
from harness.optim import LARS, param_groups


def _config(arch="resnet18", stem=False, projector="64-32"):
    return {"model": {"arch": arch, "small_image_stem": stem, "projector": projector},
            "data": {"resolution": 32}}


def _trained_state(tmp_path, stem):
    torch.manual_seed(0)
    model = BarlowTwins.from_arch("resnet18", "64-32", small_image_stem=stem)
    optimizer = LARS(param_groups(model, lr_weights=0.1, lr_biases=0.01, weight_decay=1e-6), lr=0.1)
    z = model(torch.randn(4, 3, 32, 32)).z
    z.square().mean().backward()
    optimizer.step()
    run_dir = tmp_path / "run"
    for epoch in (1, 2):
        folder = run_dir / checkpoint_dir_name(epoch)
        folder.mkdir(parents=True)
        save_state(folder, model=model, optimizer=optimizer, probe=None, step=10 * epoch,
                   epoch=epoch, config=_config(stem=stem))
    return model, optimizer, run_dir


def test_state_round_trip_and_newest_checkpoint(tmp_path):
    model, optimizer, run_dir = _trained_state(tmp_path, stem=False)
    newest = latest_checkpoint(run_dir)
    assert newest.name == checkpoint_dir_name(2)
    state = load_state(newest)
    assert (state["step"], state["epoch"]) == (20, 2)
    restored = BarlowTwins.from_arch("resnet18", "64-32")
    restored.load_state_dict(state["model"])
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    fresh = LARS(param_groups(restored, lr_weights=0.1, lr_biases=0.01, weight_decay=1e-6), lr=0.1)
    fresh.load_state_dict(state["optimizer"])  # momentum buffers and group settings
    assert fresh.param_groups[0]["base_lr"] == optimizer.param_groups[0]["base_lr"]


def test_export_of_standard_stem_loads_into_torchvision_with_only_fc_missing(tmp_path):
    model, _, run_dir = _trained_state(tmp_path, stem=False)
    out = tmp_path / "export"
    assert cli_main(["export", str(run_dir), "--out", str(out)]) == 0  # a run folder: newest
    resnet = torchvision.models.resnet18()
    result = resnet.load_state_dict(torch.load(out / "backbone.pt"), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    torch.testing.assert_close(resnet.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)
    projector = torch.load(out / "projector.pt")
    assert set(projector) == set(model.projector.state_dict())
    info = json.loads((out / "export.json").read_text())
    assert (info["arch"], info["small_image_stem"], info["projector"], info["epoch"]) == \
        ("resnet18", False, "64-32", 2)


def test_export_of_a_checkpoint_folder(tmp_path):
    _, _, run_dir = _trained_state(tmp_path, stem=True)
    out = export_checkpoint(run_dir / checkpoint_dir_name(1), tmp_path / "e1")
    assert json.loads((out / "export.json").read_text())["step"] == 10


def test_saved_config_of_a_stored_run_fetches_no_weights(tmp_path, monkeypatch):
    """A resume checks the newest checkpoint's config before training (check_resume): from a
    bucket that must be config.json's few kB, not state.pt (hundreds of MB for ResNet-50 with
    LARS state). A checkpoint from before config.json existed falls back to state.pt."""
    _, _, run_dir = _trained_state(tmp_path, stem=True)
    uri = f"file://{tmp_path / 'bucket'}/run"
    storage.upload(run_dir, uri)
    newest = latest_checkpoint(uri)
    assert storage.basename(newest) == checkpoint_dir_name(2)
    fetched = []
    for name in ("read_bytes", "download"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda *a, _real=real, **k: (
            fetched.append("/".join(map(str, a))), _real(*a, **k))[1])
    assert saved_config(newest) == _config(stem=True)
    assert fetched and not any(STATE_FILE in f for f in fetched), fetched

    fetched.clear()
    (tmp_path / "bucket" / "run" / checkpoint_dir_name(2) / CONFIG_FILE).unlink()
    assert saved_config(newest) == _config(stem=True)
    assert any(STATE_FILE in f for f in fetched), fetched
