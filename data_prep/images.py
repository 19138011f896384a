"""Opening, checking and decoding one source image, wherever its bytes live.

An image's `data` is one of: a file path (str), a `TarMember` (a slice of an uncompressed .tar),
the encoded bytes themselves (read from a compressed archive), or an already decoded HxWx3 uint8
array (torchvision data sets). All four are plain picklable values, so checking can fan out to a
process pool and FFCV's writer processes can decode them independently.

The one decode pass that checks every image (`inspect_all`) also measures it: its size, and
the per-channel sums and sums of squares of its pixels as FFCV will store them (resized by
FFCV's own resizer), from which `channel_stats` gives the data set's normalisation statistics
without a second pass over the data.
"""

import io
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import NamedTuple, Sequence

import numpy as np
from ffcv.fields.rgb_image import resizer
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

# What torchvision's ImageFolder also accepts, minus formats PIL reads poorly (.pgm, .ppm).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class TarMember:
    """Where an image's bytes sit inside an uncompressed .tar (read by offset, never unpacked)."""
    archive: str
    offset: int
    size: int


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def open_image(data) -> Image.Image:
    """A lazily decoded PIL image: call .load() or .convert() to decode it."""
    if isinstance(data, str):
        return Image.open(data)
    if isinstance(data, TarMember):
        with open(data.archive, "rb") as f:
            f.seek(data.offset)
            return Image.open(io.BytesIO(f.read(data.size)))
    if isinstance(data, bytes):
        return Image.open(io.BytesIO(data))
    raise TypeError(f"not encoded image data: {type(data).__name__}")


def load_rgb(data) -> np.ndarray:
    """The image as an HxWx3 uint8 RGB array, the one layout FFCV's RGBImageField accepts.

    Greyscale, palette, CMYK and RGBA images go through PIL's convert('RGB'); for RGBA that drops
    the alpha channel rather than compositing, as torchvision's ImageFolder loader does.
    """
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8)
    with open_image(data) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class Inspected(NamedTuple):
    """A readable image: its source size and its pixel sums at the stored size.

    The sums are exact integers over 0-255 levels, so the statistics computed from them lose
    nothing to float accumulation or to cancellation in E[x^2] - E[x]^2.
    """
    height: int
    width: int
    pixels: int                      # at the stored size
    sums: tuple[int, int, int]       # per channel (R, G, B), at the stored size
    squares: tuple[int, int, int]


_LEVELS = np.arange(256, dtype=np.int64)
_SQUARES = _LEVELS ** 2


def measure(pixels: np.ndarray, height: int, width: int,
            max_resolution: int | None) -> Inspected:
    """Sums of an RGB image at the size FFCV stores (its resizer, as RGBImageField.encode)."""
    stored = resizer(pixels, max_resolution).reshape(-1, 3)
    # A histogram per channel: exact, and several times cheaper than float sums of squares.
    counts = [np.bincount(stored[:, c], minlength=256) for c in range(3)]
    return Inspected(height, width, len(stored), tuple(int(h @ _LEVELS) for h in counts),
                     tuple(int(h @ _SQUARES) for h in counts))


def inspect_image(data, max_resolution: int | None = None) -> Inspected | str:
    """The image fully decoded and measured, or the error text of an unreadable one."""
    if isinstance(data, np.ndarray):
        return measure(load_rgb(data), data.shape[0], data.shape[1], max_resolution)
    try:
        # convert() decodes all of it (Image.open only parses the header; truncation shows up
        # here), to RGB as the writer's load_rgb does.
        with open_image(data) as img:
            return measure(np.asarray(img.convert("RGB"), dtype=np.uint8), img.height, img.width,
                           max_resolution)
    except UnidentifiedImageError:  # its message names a BytesIO address: say it plainly
        return "UnidentifiedImageError: not in an image format PIL can read"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        return f"{type(exc).__name__}: {exc}"


def inspect_all(datas: list, num_workers: int, progress: bool,
                max_resolution: int | None = None) -> list[Inspected | str]:
    """`inspect_image` for every entry, in order; encoded images over `num_workers` processes."""
    inspect = partial(inspect_image, max_resolution=max_resolution)
    # Decoded arrays (torchvision sets) are only summed: never ship them to the pool.
    results = [inspect(d) if isinstance(d, np.ndarray) else None for d in datas]
    todo = [i for i, r in enumerate(results) if r is None]
    with tqdm(total=len(datas), initial=len(datas) - len(todo), desc="check images", unit="img",
              disable=not progress) as bar:
        if num_workers == 1 or len(todo) < 2 * num_workers:
            checked = map(inspect, (datas[i] for i in todo))
            for i, result in zip(todo, checked):
                results[i] = result
                bar.update()
            return results
        # Chunks amortise the pickling round trip; ~8 chunks per worker keep the bar moving.
        chunksize = max(1, min(256, len(todo) // (8 * num_workers)))
        pool = ProcessPoolExecutor(max_workers=num_workers)
        try:
            checked = pool.map(inspect, (datas[i] for i in todo), chunksize=chunksize)
            for i, result in zip(todo, checked):
                results[i] = result
                bar.update()
        finally:  # on Ctrl-C, drop the queued chunks instead of checking them all first
            pool.shutdown(wait=True, cancel_futures=True)
        return results


def channel_stats(measured: Sequence[Inspected]) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of the pixels of `measured`, RGB scaled to [0, 1].

    Every pixel weighs the same (an image counts by its stored size); the std is the
    population one (ddof 0), what normalising by it makes exactly 1.
    """
    n = sum(m.pixels for m in measured)
    mean, std = [], []
    for c in range(3):
        s1 = sum(m.sums[c] for m in measured)
        s2 = sum(m.squares[c] for m in measured)
        mean.append(s1 / (255 * n))
        std.append(math.sqrt((n * s2 - s1 * s1) / (255 * n) ** 2))  # exact ints until here
    return mean, std


def stored_size(height: int, width: int, max_resolution: int | None) -> tuple[int, int]:
    """The size FFCV stores: its writer shrinks the longer side to max_resolution, never enlarges.

    Mirrors ffcv.fields.rgb_image.resizer (ratio in float64, sizes truncated), so the manifest's
    size statistics describe the .beton contents without decoding them again.
    """
    if max_resolution is None:
        return height, width
    ratio = max_resolution / max(height, width)
    if ratio >= 1:
        return height, width
    return int(ratio * height), int(ratio * width)
