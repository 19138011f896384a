"""Find the labelled images of a source: an image folder, a tar archive of one, a torchvision set.

Every source becomes the same `Listing`: class names sorted by name (a class's position is its
label) and, per split, the images sorted by (class, path inside the class folder). File systems
and archives list entries in arbitrary order; sorting here is what makes label indices and .beton
indices identical on every machine.
"""

import hashlib
import os
import socket
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from .errors import PrepError
from .images import TarMember, is_image_name

SPLITS = ("train", "val", "test")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_DOWNLOAD_ROOT = Path("~/.cache/barlow-harness")
LAYOUT = "<root>/<split>/<class>/<image>, with <split> among train, val, test"
# Long enough for a slow mirror to answer, short enough that an offline machine fails at once.
DOWNLOAD_TIMEOUT_S = 20


class Item(NamedTuple):
    split: str
    cls: str
    name: str  # path inside the class folder
    data: object  # see data_prep.images: path, TarMember, bytes or array

    @property
    def path(self) -> str:
        return f"{self.split}/{self.cls}/{self.name}"


@dataclass
class Listing:
    classes: list[str]
    splits: dict[str, list[Item]]  # in SPLITS order, each sorted by (class, name)
    ignored: list[str]  # files that are not images, or not at LAYOUT positions


def open_source(source, download_root: Path | None = None):
    """The source object for a folder, an archive, a torchvision data set name, or a list of
    them (merged split by split, e.g. CIFAR-10's train.tar.gz and test.tar.gz)."""
    if not isinstance(source, (str, os.PathLike)):
        sources = [str(s) for s in source]
        if not sources:
            raise PrepError("no source given: pass an image folder, an archive or a data set name")
        if len(sources) > 1:
            return MergedSource([open_source(s, download_root) for s in sources])
        source = sources[0]
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        if path.name.lower().endswith(ARCHIVE_SUFFIXES):
            return TarSource(path)
        raise PrepError(f"{path} is neither an image folder nor a tar archive "
                        f"({', '.join(ARCHIVE_SUFFIXES)}): pass a folder laid out as {LAYOUT}, "
                        "or a tar archive of one")
    if source.lower() in TORCHVISION_SETS:
        return TorchvisionSource(source.lower(), Path(download_root or DEFAULT_DOWNLOAD_ROOT))
    raise PrepError(f"source {source!r} does not exist: pass an image folder ({LAYOUT}), a "
                    ".tar/.tar.gz archive of one, or a data set name "
                    f"({', '.join(TORCHVISION_SETS)})")


class FolderSource:
    """An image-folder tree on disk. Walking it is cheap, so it happens up front."""
    kind = "folder"

    def __init__(self, root: Path):
        self.root = root
        files, dirs = {}, []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            rel = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            dirs.extend(prefix + d for d in dirnames)
            files.update((prefix + f, os.path.join(dirpath, f)) for f in filenames)
        self.listing = build_listing(files, dirs, str(root))

    def describe(self) -> dict:
        # A content hash would read every byte just to learn that nothing changed; the listing
        # (path, size, mtime) is enough to notice edits, and touching a file merely re-prepares.
        digest = hashlib.sha256()
        for items in self.listing.splits.values():
            for item in items:
                st = os.stat(item.data)
                digest.update(f"{item.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"kind": self.kind, "path": str(self.root.resolve()), "sha256": digest.hexdigest(),
                "sha256_of": "sorted (relative path, size, mtime_ns) of every image"}

    def scan(self) -> Listing:
        return self.listing


class TarSource:
    """A tar archive of an image-folder tree, read in place.

    An uncompressed .tar is indexed by member offsets and each image read on demand. A compressed
    one (.tar.gz, .tgz) cannot be seeked cheaply, so its images are read once, in archive order,
    into memory as encoded bytes: fine for CIFAR/Imagenette/Tiny-ImageNet sizes (a few GB at
    most); for ImageNet-scale archives unpack first or use an uncompressed .tar.
    """
    kind = "tar"

    def __init__(self, path: Path):
        self.path = path

    def describe(self) -> dict:
        digest = hashlib.sha256()
        try:
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise PrepError(f"cannot read archive {self.path}: {exc}") from exc
        return {"kind": self.kind, "path": str(self.path.resolve()), "sha256": digest.hexdigest(),
                "sha256_of": "archive file bytes"}

    def scan(self) -> Listing:
        try:
            files, dirs = self._read_members()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise PrepError(f"cannot read archive {self.path} ({type(exc).__name__}: {exc}): it is "
                            "corrupt, truncated or not a tar archive; re-create or re-download it, "
                            "or pass the unpacked image folder instead") from exc
        return build_listing(files, dirs, str(self.path))

    def _read_members(self) -> tuple[dict, list]:
        with open(self.path, "rb") as f:
            magic = f.read(6)
        compressed = magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
        files, dirs = {}, []
        with tarfile.open(self.path, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name.lstrip("/")).as_posix()
                if member.isdir():
                    dirs.append(name)
                elif not member.isfile():
                    continue
                elif not is_image_name(name):
                    files[name] = None  # only counted as ignored: never read
                elif compressed:
                    files[name] = tar.extractfile(member).read()
                else:
                    files[name] = TarMember(str(self.path), member.offset_data, member.size)
        return files, dirs


class TorchvisionSource:
    """cifar10, cifar100 or stl10 through torchvision, downloaded into download_root if absent.

    Only labelled splits are used: train and test (STL-10's 'unlabeled' split is left out).
    """
    kind = "torchvision"

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root.expanduser()
        raw = self._load()
        names = raw["train"][2]
        classes = sorted(names)
        label = {c: i for i, c in enumerate(classes)}
        digest = hashlib.sha256()
        splits = {}
        for split, (images, targets, _) in raw.items():
            width = len(str(len(images) - 1))
            items = [Item(split, names[t], f"{i:0{width}d}", images[i])
                     for i, t in enumerate(targets)]
            splits[split] = sorted(items, key=lambda it: (it.cls, it.name))
            digest.update(np.ascontiguousarray(images).data)
            digest.update(np.asarray([label[names[t]] for t in targets], dtype="<i8").data)
        self.listing = Listing(classes, splits, ignored=[])
        self.sha256 = digest.hexdigest()

    def _load(self) -> dict:
        import torchvision.datasets as tvd  # heavy import, only for this kind of source

        def split(split_name):
            if self.name == "stl10":
                ds = tvd.STL10(self.root, split=split_name, download=True)
                return ds.data.transpose(0, 2, 3, 1), [int(t) for t in ds.labels], ds.classes
            cls = tvd.CIFAR10 if self.name == "cifar10" else tvd.CIFAR100
            ds = cls(self.root, train=split_name == "train", download=True)
            return ds.data, list(ds.targets), ds.classes

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            return {s: split(s) for s in ("train", "test")}
        except (OSError, RuntimeError) as exc:  # URLError and timeouts are OSErrors
            raise PrepError(
                f"could not download or load {self.name} into {self.root} "
                f"({type(exc).__name__}: {exc}). If this machine has no network, pass an image "
                f"folder ({LAYOUT}) or a tar archive of one instead, or copy torchvision's "
                f"{self.name} files into {self.root}") from exc
        finally:
            socket.setdefaulttimeout(previous)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "path": str(self.root), "sha256": self.sha256,
                "sha256_of": "pixel arrays and labels of each split, in torchvision's order"}

    def scan(self) -> Listing:
        return self.listing


class MergedSource:
    """Several sources that each hold different splits of one data set."""

    kind = "merged"

    def __init__(self, parts: list):
        self.parts = parts

    def describe(self) -> dict:
        described = [part.describe() for part in self.parts]
        digest = hashlib.sha256("".join(d["sha256"] for d in described).encode()).hexdigest()
        return {"kind": self.kind, "parts": described, "sha256": digest,
                "sha256_of": "the concatenated sha256 of the parts, in the order given"}

    def scan(self) -> Listing:
        listings = [part.scan() for part in self.parts]
        where = " + ".join(map(_where, self.parts))
        splits, ignored, owner = {}, [], {}
        for part, listing in zip(self.parts, listings):
            for split, items in listing.splits.items():
                if split in splits:
                    raise PrepError(f"split '{split}' is in more than one source ({owner[split]} "
                                    f"and {_where(part)}): each source must hold different "
                                    "splits of the data set")
                splits[split], owner[split] = items, _where(part)
            ignored += listing.ignored
        classes = listings[0].classes
        for listing in listings[1:]:
            if listing.classes != classes:
                differ = sorted(set(classes) ^ set(listing.classes))
                raise PrepError(f"the sources of {where} have different classes ({_few(differ)} "
                                "not in all of them): every split needs the same class folders")
        ordered = {s: splits[s] for s in SPLITS if s in splits}
        return Listing(classes, ordered, sorted(ignored))


def _where(part) -> str:
    return str(getattr(part, "path", None) or getattr(part, "root", None) or part.name)


def build_listing(files: dict, dirs: list[str], where: str) -> Listing:
    """Turn relative paths (files: path -> image data, dirs) into a checked Listing."""
    files = {p: d for p, d in files.items() if not _hidden(p)}
    dirs = [d for d in dirs if not _hidden(d)]
    files, dirs = _strip_top_folder(files, dirs)
    tops = {p.split("/")[0] for p in files if "/" in p} | {d.split("/")[0] for d in dirs}
    present = [s for s in SPLITS if s in tops]
    if not present:
        _raise_no_splits(files, where)
    classes_of = {s: {} for s in present}
    for d in dirs:
        parts = d.split("/")
        if len(parts) == 2 and parts[0] in classes_of:
            classes_of[parts[0]].setdefault(parts[1], [])
    ignored = []
    for path, data in files.items():
        parts = path.split("/", 2)
        if len(parts) < 3 or parts[0] not in classes_of:
            ignored.append(path)
            continue
        bucket = classes_of[parts[0]].setdefault(parts[1], [])
        if is_image_name(parts[2]):
            bucket.append(Item(*parts, data))
        else:
            ignored.append(path)
    classes = _check_classes(classes_of, where)
    splits = {s: sorted((it for c in classes for it in classes_of[s][c]),
                        key=lambda it: (it.cls, it.name)) for s in present}
    return Listing(classes, splits, sorted(ignored))


def _hidden(path: str) -> bool:
    # Dot entries are tool litter (.DS_Store, ._AppleDouble, .ipynb_checkpoints), not classes.
    return any(part.startswith(".") for part in path.split("/"))


def _strip_top_folder(files: dict, dirs: list[str]) -> tuple[dict, list[str]]:
    """Drop one wrapping folder (`cifar10/train/...`) when everything sits inside it."""
    paths = [*files, *dirs]
    tops = {p.split("/")[0] for p in paths}
    inner = {p.split("/")[1] for p in paths if "/" in p}
    if len(tops) != 1 or tops & set(SPLITS) or not inner & set(SPLITS):
        return files, dirs
    top = tops.pop()
    cut = len(top) + 1
    return ({p[cut:]: d for p, d in files.items() if len(p) > cut},
            [d[cut:] for d in dirs if len(d) > cut])


def _raise_no_splits(files: dict, where: str):
    if any(len(p.split("/")) == 2 and is_image_name(p) for p in files):
        raise PrepError(f"{where} holds class folders with images directly, but the expected "
                        f"layout is {LAYOUT}: move the class folders into {where}/train/ (and "
                        "val/, test/ for the other splits)")
    raise PrepError(f"no train/, val/ or test/ folder in {where}: expected {LAYOUT}")


def _check_classes(classes_of: dict, where: str) -> list[str]:
    """The sorted class names, after checking every split has the same, non-empty classes."""
    empty = [f"{s}/{c}" for s, cs in classes_of.items() for c, items in sorted(cs.items())
             if not items]
    if empty:
        raise PrepError(f"class folder(s) without images in {where}: {_few(empty)}. Add images or "
                        "delete the folder(s) in every split")
    every = set().union(*(set(cs) for cs in classes_of.values()))
    if not every:
        raise PrepError(f"no images found in {where}: expected {LAYOUT}")
    lacking = {s: sorted(every - set(cs)) for s, cs in classes_of.items() if every - set(cs)}
    if lacking:
        detail = "; ".join(f"{s}/ lacks {_few(names)}" for s, names in lacking.items())
        raise PrepError(f"the splits of {where} have different classes: {detail}. Every split "
                        "needs a folder with images for every class, or the labels would not match")
    return sorted(every)


def _few(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
