"""Processes a test starts, and the Ray processes it must not leave behind.

Every process the test session starts carries `SESSION_VAR` in its environment (conftest sets
it once in the pytest process; children, Ray's daemons and workers included, inherit it), so
`ray_processes()` finds this session's Ray processes even after they were re-parented to init,
and never counts a Ray instance someone else runs on the machine.

`run_tree` runs a command in its own session and, if it outlives its time limit, kills the whole
tree, its Ray instance included: a timed-out sweep must not keep loading the machine while the
next test starts its own Ray (on a slow machine that made the next start time out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

SESSION_VAR = "BT_TEST_SESSION"
# Hang guards are this many times a command's time on the fast machine of this class: the
# slowest machine seen is about 3.5x slower, and a throttled run (0.6 of a core) about 3.3x.
GUARD_FACTOR = 10
# Ray's long-lived processes: the daemons and the worker processes they start.
_RAY_NAMES = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "monitor.py",
              "runtime_env", "ray_process_reaper", "default_worker.py")


def guard(fast_machine_s: float) -> float:
    """The hang guard (seconds) of a command that takes `fast_machine_s` on a fast machine."""
    return max(60.0, GUARD_FACTOR * fast_machine_s)


def _ours(proc: psutil.Process) -> bool:
    try:
        return proc.environ().get(SESSION_VAR) == os.environ.get(SESSION_VAR)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def ray_processes() -> dict[int, str]:
    """{pid: command line} of this test session's live Ray processes."""
    found = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
        if any(name in cmdline for name in _RAY_NAMES) and _ours(proc):
            found[proc.pid] = cmdline[:200]
    return found


def kill_tree(proc: subprocess.Popen | int) -> None:
    """SIGKILL a process, its process group and every descendant (found before the kill:
    orphans are re-parented and could no longer be found by ancestry)."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(pid, signal.SIGKILL)  # started with start_new_session: its group is its pid
    except (ProcessLookupError, PermissionError):
        pass
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    if not isinstance(proc, int):
        proc.wait()


def wait_for_no_ray(before: dict[int, str], guard_s: float = 120) -> dict[int, str]:
    """Wait (at most guard_s) until the Ray processes not in `before` are gone; the rest."""
    deadline = time.monotonic() + guard_s
    while True:
        left = {pid: cmd for pid, cmd in ray_processes().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


class TimedOut(AssertionError):
    pass


def run_tree(cmd: list[str], *, timeout: float, **popen) -> subprocess.CompletedProcess:
    """Run `cmd` to the end (stdout and stderr together, as text); past `timeout` seconds the
    whole tree is killed and TimedOut says so, with the output's tail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, _ = proc.communicate()
        raise TimedOut(f"{' '.join(cmd[:6])} ... still ran after {timeout:.0f} s (a hang guard: "
                       f"far above the slowest machine's time); killed with its process tree. "
                       f"Last output:\n{(out or '')[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)
