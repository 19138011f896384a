"""A sweep whose storage_path is a URI: worked on locally, mirrored to the URI.

Trials write TensorBoard, metrics.jsonl and their records into their folder directly, so the
sweep runs in a local folder (`$BT_SWEEP_CACHE`, default ~/.cache/barlow-harness/sweeps/<name>)
and copies it to the URI with pyarrow.fs (what Ray itself uses for storage_path): each trial's
folder when it ends, and everything when the sweep ends. A sweep started where the local
folder is missing (another machine, a cleaned cache) first downloads what the URI holds, so it
resumes from there. On a multi-node cluster, give a path every node mounts instead
(cluster.yaml mounts the results bucket at /mnt/results): a trial's workers write on their node.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.config.schema import ConfigError

__all__ = ["local_root", "check_uri", "download", "upload"]


def local_root() -> Path:
    return Path(os.environ.get("BT_SWEEP_CACHE", Path.home() / ".cache" / "barlow-harness"
                               / "sweeps"))


def _fs(uri: str):
    from pyarrow.fs import FileSystem

    try:
        return FileSystem.from_uri(uri)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        raise ConfigError(f"storage_path: cannot open {uri!r} ({err}): give a folder, or a URI "
                          "that pyarrow.fs (as Ray's storage_path) opens: s3://, gs://, file://")


def check_uri(uri: str) -> None:
    """Fail now, not after the first trial, if the URI cannot be opened and written."""
    fs, root = _fs(uri)
    try:
        fs.create_dir(root, recursive=True)
    except OSError as err:
        raise ConfigError(f"storage_path: cannot write to {uri} ({err})") from None


def download(uri: str, local: Path) -> bool:
    """Copy the sweep at `uri` to `local` if `local` has none and the URI has one."""
    from pyarrow.fs import FileType, copy_files

    fs, root = _fs(uri)
    if (local / "sweep.json").is_file() or fs.get_file_info(f"{root}/sweep.json").type != \
            FileType.File:
        return False
    local.mkdir(parents=True, exist_ok=True)
    copy_files(root, str(local), source_filesystem=fs)
    return True


def upload(local: Path, uri: str, part: str | None = None) -> None:
    """Mirror `local` (or its sub-folder `part`) to the URI."""
    from pyarrow.fs import LocalFileSystem, copy_files

    fs, root = _fs(uri)
    source = local / part if part else local
    if not source.exists():
        return
    target = f"{root}/{part}" if part else root
    if source.is_dir():
        fs.create_dir(target, recursive=True)
    copy_files(str(source), target, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
