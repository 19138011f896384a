"""`harness stage`: prepared data sets from shared storage to local disk, on real prep outputs,
from a folder, a file:// URI and a real S3 protocol server (moto, on 127.0.0.1)."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import PrepError, prepare, read_manifest
from data_prep.stage import stage
from harness.cli import main
from processes import guard, kill_tree


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stages_from_s3(cifar_prepared, tmp_path, monkeypatch):
    """A real S3 protocol server: moto, on loopback, the data uploaded with pyarrow."""
    from pyarrow.fs import LocalFileSystem, S3FileSystem, copy_files

    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + guard(10)
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        s3 = S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          region="us-east-1", allow_bucket_creation=True)
        s3.create_dir("datasets")
        copy_files(str(cifar_prepared), "datasets/prefix/cifar10",
                   source_filesystem=LocalFileSystem(), destination_filesystem=s3)
        uri = f"s3://datasets/prefix?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        dest = tmp_path / "node"
        (result,) = stage(uri, dest)
        assert (result.name, result.copied) == ("cifar10", True)
        assert _files(dest / "cifar10") == _files(cifar_prepared)
        (again,) = stage(uri, dest)
        assert not again.copied
    finally:
        kill_tree(server)
