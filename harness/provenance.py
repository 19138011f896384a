"""What every result records beside it: library versions, git revision, hardware."""

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTIONS", "library_versions", "git_revision", "hardware", "record_provenance",
           "usable_cpus"]

DISTRIBUTIONS = ("torch", "torchvision", "ray", "ffcv", "numpy", "numba", "pillow")
_REPO = Path(__file__).resolve().parents[1]


def library_versions(distributions=DISTRIBUTIONS) -> dict:
    """{"python": ..., dist: version or None}. Installed metadata, not __version__: ffcv 1.0.2
    still reports "0.0.3rc1"."""
    found = {"python": platform.python_version()}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def git_revision() -> str | None:
    """`git describe --always --dirty` of the project's checkout, or None outside one."""
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _gpu_names() -> list[str]:
    # nvidia-smi, not torch.cuda: the caller would otherwise hold a CUDA context on GPU 0.
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or taskset
    narrows), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def hardware() -> dict:
    cpus = usable_cpus()
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": cpus, "gpus": _gpu_names(), "host": platform.node()}


def record_provenance() -> dict:
    """Time, versions, git revision and hardware: the part every record shares."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_revision(),
            "versions": library_versions(), "hardware": hardware()}
