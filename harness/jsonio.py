"""JSON files every part of the harness writes and reads: whole or not at all, errors named.

A reader (a report while the sweep runs, TensorBoard, another node) never sees half a file:
`write_json_atomic` writes next to the target and moves it over in one step.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["read_json", "write_json_atomic"]


def write_json_atomic(path: Path | str, obj) -> Path:
    """Write `obj` as JSON next to `path`, then move it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path | str):
    """A JSON file's content; a file that does not parse is a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): a half-written or hand-edited "
                         "file; rewrite it or remove it") from None
