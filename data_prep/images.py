"""Opening, checking and decoding one source image, wherever its bytes live.

An image's `data` is one of: a file path (str), a `TarMember` (a slice of an uncompressed .tar),
the encoded bytes themselves (read from a compressed archive), or an already decoded HxWx3 uint8
array (torchvision data sets). All four are plain picklable values, so checking can fan out to a
process pool and FFCV's writer processes can decode them independently.
"""

import io
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
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


def inspect_image(data) -> tuple[int, int] | str:
    """(height, width) after a full decode, or the error text of an unreadable image."""
    if isinstance(data, np.ndarray):
        return data.shape[0], data.shape[1]
    try:
        with open_image(data) as img:
            img.load()  # Image.open only parses the header; truncation shows up here
            return img.height, img.width
    except UnidentifiedImageError:  # its message names a BytesIO address: say it plainly
        return "UnidentifiedImageError: not in an image format PIL can read"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        return f"{type(exc).__name__}: {exc}"


def inspect_all(datas: list, num_workers: int, progress: bool) -> list[tuple[int, int] | str]:
    """`inspect_image` for every entry, in order; encoded images over `num_workers` processes."""
    # Decoded arrays (torchvision sets) have nothing to check: never ship them to the pool.
    results = [inspect_image(d) if isinstance(d, np.ndarray) else None for d in datas]
    todo = [i for i, r in enumerate(results) if r is None]
    with tqdm(total=len(datas), initial=len(datas) - len(todo), desc="check images", unit="img",
              disable=not progress) as bar:
        if num_workers == 1 or len(todo) < 2 * num_workers:
            checked = map(inspect_image, (datas[i] for i in todo))
            for i, result in zip(todo, checked):
                results[i] = result
                bar.update()
            return results
        # Chunks amortise the pickling round trip; ~8 chunks per worker keep the bar moving.
        chunksize = max(1, min(256, len(todo) // (8 * num_workers)))
        pool = ProcessPoolExecutor(max_workers=num_workers)
        try:
            checked = pool.map(inspect_image, (datas[i] for i in todo), chunksize=chunksize)
            for i, result in zip(todo, checked):
                results[i] = result
                bar.update()
        finally:  # on Ctrl-C, drop the queued chunks instead of checking them all first
            pool.shutdown(wait=True, cancel_futures=True)
        return results


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
