"""`harness stage`: prepared data sets from shared storage to local disk, on real prep outputs,
from a folder, a file:// URI and a real S3 protocol server (moto, on 127.0.0.1)."""

import json
import shutil
from pathlib import Path

import pytest

from data_prep import PrepError, prepare, read_manifest
from data_prep.stage import stage
from harness.cli import main
from moto_s3 import TEST_CREDENTIALS, moto_server, s3_uri


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def bucket(cifar_prepared, tmp_path) -> Path:
    """A shared folder holding two prepared data sets, as a bucket would."""
    root = tmp_path / "bucket" / "data"
    for name in ("a", "b"):
        shutil.copytree(cifar_prepared, root / name)
    return root


def test_stages_every_data_set_then_leaves_unchanged_ones_alone(bucket, cifar_folder, tmp_path,
                                                                capsys):
    dest = tmp_path / "node"
    assert main(["stage", f"file://{bucket}", "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "a staged in" in out and "b staged in" in out
    for name in ("a", "b"):
        assert _files(dest / name) == _files(bucket / name)
        read_manifest(dest / name)
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]

    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert main(["stage", str(bucket), "--to", str(dest)]) == 0  # a plain path, too
    assert capsys.readouterr().out.count("up to date") == 2
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes

    # A damaged local copy, and a data set prepared again at the source: both copied anew.
    (dest / "a" / "test.beton").write_bytes(b"truncated")
    shutil.rmtree(bucket / "b")
    prepare(str(cifar_folder), bucket / "b", write_mode="raw", val_fraction=0.2, num_workers=1,
            progress=False)
    results = {r.name: r.copied for r in stage(str(bucket), dest)}
    assert results == {"a": True, "b": True}
    assert _files(dest / "a") == _files(bucket / "a")
    assert _files(dest / "b") == _files(bucket / "b")
    assert read_manifest(dest / "b")["options"]["val_fraction"] == 0.2


def test_a_broken_source_leaves_nothing_that_looks_prepared(bucket, tmp_path):
    dest = tmp_path / "node"
    stage(str(bucket), dest, only=["a"])
    before = _files(dest / "a")
    (bucket / "a" / "train.beton").unlink()               # listed in its manifest, now gone
    manifest = json.loads((bucket / "a" / "manifest.json").read_text())
    manifest["note"] = "uploaded again"                    # so the local copy is out of date
    (bucket / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PrepError, match=r"staging .*a.* failed .*nothing was left there"):
        stage(str(bucket), dest, only=["a"])
    assert _files(dest / "a") == before                    # the old copy stays as it was
    assert sorted(p.name for p in dest.iterdir()) == ["a"]  # no staging folder left


def test_bad_sources_say_what_to_do(bucket, tmp_path, capsys):
    assert main(["stage", str(tmp_path / "nowhere"), "--to", str(tmp_path / "n")]) == 2
    assert "does not exist: upload the prepared data sets there" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["stage", str(tmp_path / "empty"), "--to", str(tmp_path / "n")]) == 2
    assert "no prepared data set at" in capsys.readouterr().err
    assert main(["stage", str(bucket), "--to", str(tmp_path / "n"), "--only", "c"]) == 2
    assert "no prepared data set 'c' at" in capsys.readouterr().err


def test_stages_from_s3(cifar_prepared, tmp_path, monkeypatch):
    """A real S3 protocol server: moto, on loopback, the data uploaded with pyarrow."""
    from pyarrow.fs import LocalFileSystem, S3FileSystem, copy_files

    with moto_server() as endpoint:
        for key, value in TEST_CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        s3 = S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                          region="us-east-1", allow_bucket_creation=True)
        s3.create_dir("datasets")
        copy_files(str(cifar_prepared), "datasets/prefix/cifar10",
                   source_filesystem=LocalFileSystem(), destination_filesystem=s3)
        dest = tmp_path / "node"
        (result,) = stage(s3_uri(endpoint, "datasets", "prefix"), dest)
        assert (result.name, result.copied) == ("cifar10", True)
        assert _files(dest / "cifar10") == _files(cifar_prepared)
        (again,) = stage(s3_uri(endpoint, "datasets", "prefix"), dest)
        assert not again.copied
