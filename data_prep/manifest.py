"""manifest.json: what a prepared folder holds, where it came from, and whether it is complete.

The manifest is written last and atomically, so its presence is the mark of a finished
preparation: a folder without one (or whose files no longer match it) is not prepared.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import PrepError

# 2: the validation list (`validation`, val.txt) and label subsets drawn outside it.
# 3: `normalization` (channel mean / std of train minus val, which the loaders use) and
#    subsets imported from published lists (`imported_from`), val.txt carved outside them.
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
_REQUIRED = ("format_version", "fingerprint", "classes", "splits", "validation", "subsets",
             "normalization", "source", "options")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint_of(source_sha256: str, options: dict) -> str:
    """What the outputs depend on: the source's checksum, the options and the file format."""
    key = {"format_version": FORMAT_VERSION, "source_sha256": source_sha256, "options": options}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def output_files(manifest: dict) -> dict[str, int]:
    """File name -> byte size of every .beton and index list the manifest vouches for."""
    entries = [*manifest["splits"].values(), *manifest["subsets"].values(),
               *([manifest["validation"]] if (manifest.get("validation") or {}).get("file")
                 else [])]
    return {e["file"]: e["bytes"] for e in entries}


def read_index_list(out: Path, entry: dict) -> np.ndarray:
    """The indices (into train.beton) of an index list the manifest lists: val.txt, a subset."""
    path = Path(out) / entry["file"]
    try:
        indices = np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise PrepError(f"{path} is unreadable ({exc}): run `harness prep SOURCE --out {out} "
                        "--force`") from exc
    if len(indices) != entry["count"] or sha256_file(path) != entry.get("sha256"):
        raise PrepError(f"{path} does not match {Path(out) / MANIFEST} (count or checksum): it "
                        f"was changed after `harness prep`; run it again with --force")
    return indices


def read_manifest(out: Path) -> dict:
    """The manifest of a prepared folder, after checking that every file it lists is intact."""
    out = Path(out)
    redo = f"run `harness prep SOURCE --out {out}`"
    path = out / MANIFEST
    if not path.is_file():
        raise PrepError(f"{out} is not a prepared data set (no {MANIFEST}; the preparation never "
                        f"ran or was interrupted): {redo}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrepError(f"{path} is unreadable ({exc}): {redo} --force") from exc
    # The version first: an older manifest lacks the newer keys, and that is why.
    if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise PrepError(f"{path} has format_version {manifest['format_version']}, this code reads "
                        f"{FORMAT_VERSION}: {redo} --force")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise PrepError(f"{path} is incomplete (no {', '.join(missing)}): {redo} --force")
    try:
        files = output_files(manifest)
    except (KeyError, TypeError, AttributeError) as exc:
        raise PrepError(f"{path} is incomplete (bad splits/subsets entry: {exc!r}): "
                        f"{redo} --force") from exc
    for name, size in files.items():
        file = out / name
        if not file.is_file():
            raise PrepError(f"{file} listed in {path} is missing: {redo} --force")
        if file.stat().st_size != size:
            raise PrepError(f"{file} has {file.stat().st_size} bytes, {path} recorded {size} "
                            f"(changed or truncated): {redo} --force")
    return manifest


def current_manifest(out: Path, wanted_fingerprint: str) -> dict | None:
    """The existing manifest if it is intact and was made from the same source and options."""
    try:
        manifest = read_manifest(out)
    except PrepError:
        return None
    return manifest if manifest["fingerprint"] == wanted_fingerprint else None


def commit(staged: Path, out: Path, manifest: dict):
    """Move the staged outputs into `out` and write the manifest, in a crash-safe order.

    The old manifest goes first, so a crash while files are being replaced leaves a folder that
    reads as unprepared rather than a manifest describing a mix of old and new files. os.replace
    is atomic within a file system, and `staged` lives inside `out` to guarantee that.
    """
    try:
        previous = output_files(json.loads((out / MANIFEST).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        previous = {}
    (out / MANIFEST).unlink(missing_ok=True)
    produced = output_files(manifest)
    for name in produced:
        _fsync(staged / name)
        os.replace(staged / name, out / name)
    for stale in set(previous) - set(produced):  # e.g. a val.beton the new source no longer has
        if stale == Path(stale).name:  # never follow a damaged manifest out of `out`
            (out / stale).unlink(missing_ok=True)
    tmp = staged / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    # Synced before the rename, so a power cut cannot leave a manifest pointing at lost data.
    _fsync(tmp)
    os.replace(tmp, out / MANIFEST)


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
