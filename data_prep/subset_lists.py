"""Label subsets imported from published lists, such as SimCLR's ImageNet 1% and 10% files.

A list names images of the train split, one per line: a bare file name (n01440764_10026.JPEG),
a path relative to the split folder (n01440764/n01440764_10026.JPEG) or one relative to the
source root (train/n01440764/n01440764_10026.JPEG); blank lines are ignored. `read_lists`
checks the files before the source is opened (their checksums enter the preparation's
fingerprint, so an edited list re-prepares); `resolve` turns a list into ascending indices
into train.beton, refusing any name it cannot place on exactly one image.
"""

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np

from .errors import PrepError
from .manifest import sha256_file
from .sources import Item

__all__ = ["SubsetList", "read_lists", "train_lookup", "resolve"]

NAME = re.compile(r"[A-Za-z0-9_-]+")
_FORMS = "a bare file name, <class>/<file> or <split>/<class>/<file>"


@dataclass(frozen=True)
class SubsetList:
    name: str
    path: Path                  # resolved
    lines: tuple[str, ...]      # the image names, blank lines dropped
    sha256: str                 # of the file's bytes


def read_lists(subset_lists: Mapping[str, str | Path] | None) -> dict[str, SubsetList]:
    """Subset name -> its list, every name and file checked; nothing of the source is read."""
    lists = {}
    for name, path in (subset_lists or {}).items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise PrepError(f"subset name {name!r}: use letters, digits, _ and - only (it names "
                            "the file subset_<name>.txt), e.g. 1pct")
        path = Path(path).expanduser()
        if not path.is_file():
            raise PrepError(f"subset list {name}={path} does not exist or is not a file: pass "
                            "a text file naming one training image per line")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PrepError(f"subset list {path} is unreadable ({exc}): pass a text file naming "
                            "one training image per line") from exc
        # as_posix() folds ./ and doubled slashes; strip() also takes Windows line ends.
        lines = tuple(PurePosixPath(line.strip()).as_posix() for line in text.splitlines()
                      if line.strip())
        if not lines:
            raise PrepError(f"subset list {path} is empty: it must name at least one training "
                            f"image, one per line ({_FORMS})")
        lists[name] = SubsetList(name, path.resolve(), lines, sha256_file(path))
    return lists


def train_lookup(items: Sequence[Item]) -> dict[str, list[int]]:
    """Every way a list may name a train image -> the indices (into train.beton) it names."""
    lookup: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        # item.path is <source split>/<class>/<name>: the path relative to the source root.
        for key in {PurePosixPath(item.name).name, f"{item.cls}/{item.name}", item.path}:
            lookup.setdefault(key, []).append(index)
    return lookup


def resolve(listed: SubsetList, lookup: dict[str, list[int]]) -> np.ndarray:
    """Ascending indices into train.beton of the images `listed` names, each exactly once."""
    unknown, ambiguous, line_of, repeated = [], [], {}, []
    for line in listed.lines:
        found = lookup.get(line, ())
        if not found:
            unknown.append(line)
        elif len(found) > 1:
            ambiguous.append(f"{line} ({len(found)} images)")
        elif found[0] in line_of:
            repeated.append(f"{line} (also {line_of[found[0]]})")
        else:
            line_of[found[0]] = line
    where = f"subset list {listed.name}={listed.path}"
    if unknown:
        raise PrepError(f"{where}: {len(unknown)} of its {len(listed.lines)} names are not among "
                        f"the readable train images, e.g. {_first(unknown)}. Name train images "
                        f"as {_FORMS} of this source (unreadable images are skipped and cannot "
                        "be listed)")
    if ambiguous:
        raise PrepError(f"{where}: {len(ambiguous)} names match more than one train image, e.g. "
                        f"{_first(ambiguous)}: give those as <class>/<file>")
    if repeated:
        raise PrepError(f"{where}: {len(repeated)} lines name an image an earlier line already "
                        f"names, e.g. {_first(repeated)}: list each image once")
    return np.sort(np.fromiter(line_of, dtype=np.int64, count=len(line_of)))


def _first(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
