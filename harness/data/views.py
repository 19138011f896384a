"""A picture of what the network trains on: rows of (original, view A, view B) per image."""

from pathlib import Path

import numpy as np
import torch
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.loader import OrderOption
from ffcv.pipeline import PipelineSpec
from torchvision.utils import make_grid, save_image

from .augment import VIEW_PRESETS, BatchAugment, ViewAugment, preset_views
from .loaders import _LoaderSpec
from .prepared import beton_path

__all__ = ["view_grid", "save_view_grid", "preset_views", "VIEW_PRESETS"]

def view_grid(data_dir: Path | str, *, resolution: int, views: tuple[ViewAugment, ViewAugment],
              count: int = 8, split: str = "train", seed: int = 0) -> torch.Tensor:
    """A 3 x H x W image in [0, 1]: one row per image, columns original | view A | view B.

    The images are `count` samples of the split drawn with `seed`; the views are made by the
    same decoders and batch augmentations as the training loader. They stay in [0, 1], as the
    augmentations leave them: a picture, so without the loader's last step, the normalisation
    with the data set's mean and std (which would only be clipped on saving).
    """
    path = beton_path(data_dir, split)
    from ffcv.reader import Reader
    total = Reader(str(path)).num_samples
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    indices = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    spec = _LoaderSpec(path, len(indices), resolution, torch.device("cpu"), 1, seed, indices)
    original = CenterCropRGBImageDecoder((resolution, resolution), ratio=1.0)
    pipelines = {"image": spec.image_pipeline(original, None), "label": None}
    for stream, (name, view) in enumerate(zip(("view_a", "view_b"), views)):
        decoder = RandomResizedCropRGBImageDecoder((resolution, resolution), scale=view.crop_scale,
                                                   ratio=view.crop_ratio)
        pipelines[name] = PipelineSpec("image", decoder=decoder,
                                       transforms=spec.image_pipeline(decoder, view.flip_p,
                                                                         stream=stream)[1:])
    # A handful of images: FFCV's pipeline uncompiled (harness.data.loaders), 0.3 s, not 3.
    loader = spec.build(pipelines, order=OrderOption.SEQUENTIAL, distributed=False, drop_last=False,
                        interpret=True)
    images, view_a, view_b = (t.float().div(255.0) for t in next(iter(loader)))
    view_a = BatchAugment(views[0], resolution, seed=seed)(view_a)
    view_b = BatchAugment(views[1], resolution, seed=seed + 1)(view_b)
    rows = torch.stack((images, view_a, view_b), dim=1).flatten(0, 1)
    return make_grid(rows, nrow=3, padding=2, pad_value=1.0)


def save_view_grid(data_dir: Path | str, out: Path | str, **kwargs) -> Path:
    """Write view_grid(...) as a PNG; returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = view_grid(data_dir, **kwargs)
    # 32 px images are too small to judge by eye: enlarge small cells, pixels kept sharp.
    zoom = max(1, 96 // kwargs["resolution"])
    if zoom > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=zoom, mode="nearest")[0]
    save_image(grid, out)
    return out
