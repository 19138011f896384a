"""What a `harness prep` folder holds, read from its manifest: a split's .beton, the data
set's channel statistics. No ffcv here: a driver or an evaluation plan reads these without
paying for the loaders."""

from pathlib import Path
from typing import NamedTuple

__all__ = ["beton_path", "Normalization", "dataset_normalization"]


def beton_path(data_dir: Path | str, split: str) -> Path:
    """The .beton of one split of a `harness prep` output, with a clear error when absent.

    data_prep.read_manifest does the checking: a folder without a manifest, or whose files no
    longer match it, is not prepared (PrepError, saying to run `harness prep`).
    """
    from data_prep import read_manifest

    data_dir = Path(data_dir)
    splits = read_manifest(data_dir)["splits"]
    if split not in splits:
        raise ValueError(f"{data_dir} has no '{split}' split; it has: {', '.join(sorted(splits))}")
    return data_dir / splits[split]["file"]


class Normalization(NamedTuple):
    mean: tuple[float, float, float]    # per RGB channel, of pixels in [0, 1]
    std: tuple[float, float, float]


def dataset_normalization(path: Path | str) -> Normalization:
    """The mean and std that the images of the .beton at `path` are normalised with: those
    `harness prep` measured on its data set's training images (train minus val; the
    manifest's `normalization.of` says which), read from the manifest beside it.

    Pretraining and every evaluation of a data set therefore agree. A backbone evaluated on
    another data set (the transfer protocol, or an exported backbone later) is fed that data
    set's images standardised by that data set's own statistics, not its pretraining set's:
    the choice is made here, by reading the manifest of the data actually loaded.
    """
    from data_prep import read_manifest

    stats = read_manifest(Path(path).parent)["normalization"]
    return Normalization(tuple(stats["mean"]), tuple(stats["std"]))
