"""harness.provenance.cpu_quota: a cgroup CPU limit read from v1 and v2 layouts (a fake tree
written here, as the kernel lays them out)."""

from pathlib import Path

from harness.provenance import cpu_quota


def _v1(root: Path, path: str, quota: int, period: int = 100000) -> None:
    folder = root / "cpu" / path.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")


def _v2(root: Path, path: str, limit: str) -> None:
    (root / "cgroup.controllers").write_text("cpu memory\n")
    folder = root / path.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(f"{limit}\n")


def test_v1_quota_is_the_tightest_along_the_path(tmp_path):
    _v1(tmp_path, "/", -1)                          # the root: no limit
    _v1(tmp_path, "/runner", 150000)                # 1.5 CPUs for the runner
    _v1(tmp_path, "/runner/throttled.7", 60000)     # 0.6 for this run
    proc = "4:memory:/x\n1:cpu:/runner/throttled.7\n0::/\n"
    assert cpu_quota(proc, tmp_path) == 0.6
    _v1(tmp_path, "/runner/throttled.7", -1)        # unlimited itself: its parent's limit holds
    assert cpu_quota(proc, tmp_path) == 1.5
    assert cpu_quota("1:cpu:/\n", tmp_path) is None


def test_v2_cpu_max(tmp_path):
    _v2(tmp_path, "/ci/job", "250000 100000")
    _v2(tmp_path, "/ci", "max 100000")
    assert cpu_quota("0::/ci/job\n", tmp_path) == 2.5
    assert cpu_quota("0::/ci\n", tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cpu_quota("1:cpu:/somewhere\n0::/else\n", tmp_path) is None
    assert cpu_quota("", tmp_path) is None

