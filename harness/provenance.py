"""What every result records beside it: library versions, git revision, hardware."""

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTIONS", "library_versions", "git_revision", "hardware", "record_provenance",
           "usable_cpus", "cpu_quota"]

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


def _quota_file(path: Path, v2: bool) -> float | None:
    """CPUs one cgroup's own limit allows (cpu.max, or cpu.cfs_quota_us / cpu.cfs_period_us)."""
    try:
        if v2:
            quota, period = (path / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((path / "cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int((path / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def cpu_quota(proc_cgroup: str | None = None, root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs this process's cgroups let it use in all (a container's or a runner's CPU
    limit: cgroup v1 cpu.cfs_quota_us or v2 cpu.max, the tightest along the path from the
    root), or None without such a limit. Unlike the affinity mask (usable_cpus), a quota
    leaves every core visible and shares one allowance among all of them. proc_cgroup: the
    text of /proc/self/cgroup (read when None); root: where the hierarchies are mounted."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            mounts, v2 = [root, root / "unified"], True
        elif "cpu" in controllers.split(","):
            mounts, v2 = [root / controllers, root / "cpu", root / "cpu,cpuacct"], False
        else:
            continue
        # The hierarchy's mount: its root holds the controller's own files.
        marker = "cgroup.controllers" if v2 else "cpu.cfs_period_us"
        mount = next((m for m in mounts if (m / marker).is_file()), None)
        if mount is None:
            continue
        node = Path(path)
        for ancestor in (node, *node.parents):
            limit = _quota_file(mount / str(ancestor).lstrip("/"), v2)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def hardware() -> dict:
    cpus = usable_cpus()
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": cpus, "cpu_quota": cpu_quota(), "gpus": _gpu_names(), "host": platform.node()}


def record_provenance() -> dict:
    """Time, versions, git revision and hardware: the part every record shares."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_revision(),
            "versions": library_versions(), "hardware": hardware()}
