"""Storage that is a URI (s3://, gs://, file://: anything pyarrow.fs opens, as Ray's
storage_path), for pretraining runs and sweeps alike.

Ray Train writes its checkpoints to such a URI itself. What the harness writes beside them
(metrics.jsonl and TensorBoard from a run's rank 0, its launch records and export, a sweep's
trial records) is written into a local working folder and mirrored to the URI with pyarrow.fs,
the library Ray itself uses for storage_path; whoever works on a run next (a restarted worker
on another node, `harness sweep` on another machine) first fetches what the URI holds. The URI
is the record; a local working folder is a cache (`$BT_STORAGE_CACHE`, default
~/.cache/barlow-harness).

A URI may carry pyarrow's options as a query, as Ray's storage_path does:
    s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1
`join` keeps the query at the end when it appends to the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

from harness.config.schema import ConfigError

__all__ = ["is_uri", "join", "basename", "filesystem", "local_root", "local_cache", "check_uri",
           "exists",
           "read_text", "write_text", "read_bytes", "list_dirs", "download", "upload", "delete",
           "append_line", "local_copy", "download_records"]

_WRITE_CHECK = ".harness-write-check"


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(uri: str, *parts: str) -> str:
    """`uri`/part/...: the path grows, the query (pyarrow's options) stays at the end."""
    base, sep, query = str(uri).partition("?")
    path = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return path + sep + query


def basename(uri: str) -> str:
    """The last part of a URI's path: 'ckpt' of s3://b/run/ckpt?endpoint_override=..."""
    return str(uri).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def _cache_root() -> Path:
    return Path(os.environ.get("BT_STORAGE_CACHE",
                               Path.home() / ".cache" / "barlow-harness")).expanduser()


def local_root() -> Path:
    """Where a sweep stored at a URI works locally (`$BT_SWEEP_CACHE` wins, for older set-ups)."""
    if "BT_SWEEP_CACHE" in os.environ:
        return Path(os.environ["BT_SWEEP_CACHE"]).expanduser()
    return _cache_root() / "sweeps"


def local_cache(kind: str, uri: str, name: str) -> Path:
    """This node's working folder for `uri` (a run's or a sweep's): one per URI and name."""
    digest = hashlib.sha1(str(uri).encode()).hexdigest()[:10]
    return _cache_root() / kind / f"{name}-{digest}"


def filesystem(location: str | Path):
    """(pyarrow FileSystem, path on it) of a URI or a local folder; ConfigError if it cannot be
    opened (an unknown scheme, a malformed query)."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    if not is_uri(location):
        return LocalFileSystem(), str(Path(location).expanduser().resolve())
    try:
        return FileSystem.from_uri(_with_s3_defaults(str(location)))
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        raise ConfigError(f"storage: cannot open {location!r} ({_first_line(err)}): give a folder, "
                          "or a URI that pyarrow.fs (as Ray's storage_path) opens: s3://bucket/"
                          "prefix, gs://..., file:///path") from None


def _with_s3_defaults(uri: str) -> str:
    """An s3:// URI with allow_delayed_open=true unless it says otherwise: pyarrow then writes
    a file smaller than one part (every record here, most checkpoints of small models) with
    one PutObject when it is closed, instead of a multipart upload opened when the file is
    (three requests: create, part, complete; measured against moto). An error that would have
    come at open comes at close instead, still before a write is taken as done (check_uri
    writes its probe file the same way, before any training)."""
    base, _, query = uri.partition("?")
    # keep_blank_values: an option set empty is still the URI's own (pyarrow then names it).
    if not uri.startswith("s3://") or "allow_delayed_open" in parse_qs(query,
                                                                       keep_blank_values=True):
        return uri
    return f"{base}?{'&'.join(filter(None, (query, 'allow_delayed_open=true')))}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _advice(err: BaseException) -> str:
    """What to do about a storage error, from pyarrow's (AWS SDK's) message."""
    text = str(err).upper()
    if "NO_SUCH_BUCKET" in text or "NOSUCHBUCKET" in text or (
            "BUCKET" in text and "NOT FOUND" in text):
        return "the bucket does not exist: create it (aws s3 mb s3://BUCKET) or fix its name"
    if any(k in text for k in ("ACCESS_DENIED", "ACCESSDENIED", "INVALIDACCESSKEYID",
                               "SIGNATUREDOESNOTMATCH", "INVALID_ACCESS_KEY", "SIGNATURE",
                               "FORBIDDEN", "403")):
        return ("access denied: check the credentials (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, an instance role) and that they may write to this prefix")
    if any(k in text for k in ("NETWORK_CONNECTION", "COULDN'T CONNECT", "CURLCODE",
                               "TIMED OUT", "RESOLVE")):
        return ("the storage endpoint cannot be reached: check the endpoint (endpoint_override=) "
                "and the network")
    if "PERMISSION DENIED" in text or "READ-ONLY" in text:
        return "the location is read-only: give one this user may write to"
    return "fix what it names, then run the command again"


def check_uri(uri: str) -> None:
    """Fail now, before any training, if `uri` cannot be opened, reached and written: a small
    file is written there and removed again."""
    fs, root = filesystem(uri)
    probe = f"{root}/{_WRITE_CHECK}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"harness write check\n")
        fs.delete_file(probe)
    except OSError as err:
        raise ConfigError(f"storage: cannot write to {uri} ({_first_line(err)}): "
                          f"{_advice(err)}") from None


def exists(location: str | Path) -> bool:
    from pyarrow.fs import FileType

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != FileType.NotFound


def read_bytes(location: str | Path) -> bytes | None:
    """The file's bytes, or None if there is none."""
    from pyarrow.fs import FileType

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | Path) -> str | None:
    data = read_bytes(location)
    return None if data is None else data.decode()


def write_text(location: str | Path, text: str) -> None:
    """The whole file at once (an object store's put is atomic; a local file is replaced)."""
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not is_uri(location):
        tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def list_dirs(location: str | Path) -> list[str]:
    """Names of the folders directly in `location` (none if it does not exist)."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = filesystem(location)
    infos = fs.get_file_info(FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == FileType.Directory)


def download(uri: str, local: Path, part: str | None = None) -> bool:
    """Copy what `uri` (or its file or folder `part`) holds into `local`; False if nothing."""
    from pyarrow.fs import FileType, LocalFileSystem, copy_files

    fs, root = filesystem(uri)
    source = f"{root}/{part}" if part else root
    kind = fs.get_file_info(source).type
    if kind == FileType.NotFound:
        return False
    target = Path(local) / part if part else Path(local)
    (target.parent if kind == FileType.File else target).mkdir(parents=True, exist_ok=True)
    copy_files(source, str(target), source_filesystem=fs, destination_filesystem=LocalFileSystem())
    return True


def upload(local: Path, uri: str, part: str | None = None) -> None:
    """Mirror `local` (or its file or sub-folder `part`) to the URI."""
    from pyarrow.fs import LocalFileSystem, copy_files

    fs, root = filesystem(uri)
    source = Path(local) / part if part else Path(local)
    if not source.exists():
        return
    target = f"{root}/{part}" if part else root
    fs.create_dir(target if source.is_dir() else target.rsplit("/", 1)[0], recursive=True)
    copy_files(str(source), target, source_filesystem=LocalFileSystem(), destination_filesystem=fs)


def delete(location: str | Path) -> None:
    """Remove a file if it is there."""
    from pyarrow.fs import FileType

    fs, path = filesystem(location)
    if fs.get_file_info(path).type == FileType.File:
        fs.delete_file(path)


def append_line(location: str | Path, line: str) -> None:
    """One line more at the end of a text file (an object store has no append: read, rewrite)."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line.rstrip("\n") + "\n")
        return
    write_text(location, (read_text(location) or "") + line.rstrip("\n") + "\n")


@contextlib.contextmanager
def local_copy(location: str | Path) -> Iterator[Path]:
    """A local path holding what `location` holds (a file or a folder): the path itself, or a
    temporary copy of a URI's content, removed on exit."""
    if not is_uri(location):
        yield Path(location)
        return
    base, sep, query = str(location).partition("?")
    name = basename(location)
    parent = base.rstrip("/")[:-len(name)].rstrip("/")
    with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
        if not download(parent + sep + query, Path(tmp), name):
            raise FileNotFoundError(f"{location} does not exist")
        yield Path(tmp) / name


def download_records(uri: str, local: Path, skip=("checkpoint_epoch", "export")) -> int:
    """Copy what `uri` holds into `local`, except the folders whose name starts with one of
    `skip` (checkpoints and exports: Ray Train and evaluation read those from the URI itself);
    returns the number of files copied."""
    from pyarrow.fs import FileSelector, FileType, LocalFileSystem, copy_files

    fs, root = filesystem(uri)
    copied = 0
    for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True)):
        relative = info.path[len(root):].lstrip("/")
        if info.type != FileType.File or any(
                part.startswith(skip) for part in relative.split("/")[:-1]):
            continue
        target = Path(local) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_files(info.path, str(target), source_filesystem=fs,
                   destination_filesystem=LocalFileSystem())
        copied += 1
    return copied
