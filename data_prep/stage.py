"""Copy prepared data sets from shared storage (s3://, gs://, a mounted folder) to a node's disk.

FFCV memory-maps its .beton files, so every node trains from a local copy. `stage(source,
dest)` copies each prepared data set found at `source` (the folder itself if it holds a
manifest.json, else each sub-folder that does) to `dest/<name>`, through pyarrow.fs (what Ray
uses for its own storage): no s3fs, no FUSE mount. A data set whose local manifest.json equals
the source's, with every file it lists at its recorded size, is left alone. Otherwise its files
are copied into a hidden staging folder beside the target, manifest.json last, the staged copy
is checked with read_manifest, and only then does it replace the old folder: an interrupted or
failed copy never leaves a folder that looks prepared.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import PrepError
from .manifest import MANIFEST, output_files, read_manifest

__all__ = ["StageResult", "stage"]


@dataclass(frozen=True)
class StageResult:
    name: str
    path: Path
    copied: bool      # False: the local copy was already up to date
    bytes: int        # the data set's size (its .beton files and index lists)


def _filesystem(source: str):
    from pyarrow.fs import FileSystem, LocalFileSystem

    if "://" not in source:
        return LocalFileSystem(), str(Path(source).expanduser().resolve())
    try:
        return FileSystem.from_uri(source)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        raise PrepError(f"cannot open {source!r} ({err}): give a folder or a URI pyarrow.fs "
                        "opens (s3://bucket/prefix, gs://..., file:///path)") from None


def _read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _data_sets(fs, root: str) -> list[tuple[str, str]]:
    """(name, path) of each prepared data set at root: root itself, or its sub-folders."""
    from pyarrow.fs import FileSelector, FileType

    info = fs.get_file_info(root)
    if info.type == FileType.NotFound:
        raise PrepError(f"{root} does not exist: upload the prepared data sets there first "
                        "(`harness prep ... --out DIR`, then copy DIR)")
    if fs.get_file_info(f"{root}/{MANIFEST}").type == FileType.File:
        return [(Path(root).name, root)]
    found = []
    for entry in fs.get_file_info(FileSelector(root)):
        if entry.type == FileType.Directory and \
                fs.get_file_info(f"{entry.path}/{MANIFEST}").type == FileType.File:
            found.append((entry.base_name, entry.path))
    return sorted(found)


def _up_to_date(local: Path, manifest: bytes) -> bool:
    if not (local / MANIFEST).is_file() or (local / MANIFEST).read_bytes() != manifest:
        return False
    try:
        read_manifest(local)  # every listed file present at its recorded size
    except PrepError:
        return False
    return True


def _copy(fs, remote: str, manifest: bytes, target: Path) -> None:
    staging = target.parent / f".staging-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files = output_files(json.loads(manifest))
        for name in sorted(files):
            with fs.open_input_stream(f"{remote}/{name}") as src, open(staging / name, "wb") as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
        (staging / MANIFEST).write_bytes(manifest)  # last: its presence marks a complete copy
        read_manifest(staging)
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, PrepError, ValueError, KeyError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise PrepError(f"staging {remote} into {target} failed ({err}); nothing was left "
                        f"there: check the source (it must be a finished `harness prep` "
                        f"output), then run `harness stage` again") from None


def stage(source: str, dest: Path | str, only: list[str] | None = None) -> list[StageResult]:
    """Stage every prepared data set at `source` (or those named in `only`) into `dest`."""
    fs, root = _filesystem(str(source))
    found = _data_sets(fs, root.rstrip("/"))
    if only:
        names = {name for name, _ in found}
        missing = [n for n in only if n not in names]
        if missing:
            raise PrepError(f"no prepared data set {missing[0]!r} at {source}; it has: "
                            f"{', '.join(sorted(names)) or 'none'}")
        found = [(n, p) for n, p in found if n in only]
    if not found:
        raise PrepError(f"no prepared data set at {source} (no {MANIFEST} in it or in any "
                        "sub-folder): upload `harness prep` outputs there first")
    dest = Path(dest).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    results = []
    for name, remote in found:
        manifest = _read_bytes(fs, f"{remote}/{MANIFEST}")
        target = dest / name
        try:
            size = sum(output_files(json.loads(manifest)).values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise PrepError(f"{source}: {name}/{MANIFEST} is unreadable ({err!r}): prepare that "
                            "data set again and upload it") from None
        copied = not _up_to_date(target, manifest)
        if copied:
            _copy(fs, remote, manifest, target)
        results.append(StageResult(name, target, copied, size))
    return results
