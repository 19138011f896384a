"""A throw-away Linux sandbox with nothing but loopback, for launching Ray clusters for real.

`Sandbox(root)` is `unshare --net --pid --mount --fork`:
- a network namespace whose only interface is lo: every address but 127.0.0.1 is unreachable,
  so nothing a test starts in it (ray up, sshd, moto, Ray) can leave the machine;
- a PID namespace: the `ray stop` that `ray up` and `ray down` run on the head kills every Ray
  process it can see, and in here it sees only the sandbox's. When the sandbox ends, the kernel
  kills whatever is still running in it, whatever the test did;
- a mount namespace with its own /proc, /tmp/ray (Ray's sessions, the local provider's state)
  and whatever `bind()` adds; the machine's mounts are untouched.

`Sshd(sandbox, root)` is the test's own sshd on the sandbox's 127.0.0.1:22, with its own host
and user keys, root login by key only, and a session environment of the test's choosing (HOME
inside `root`, so `ray up` writes its bootstrap files there, never to the real home).
Linux and root only; `unavailable()` says exactly what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Sandbox", "Sshd", "unavailable", "RAY_PROCESS_MARKERS"]

SSHD = "/usr/sbin/sshd"
# Command-line fragments of Ray's long-running processes (ray._private.services names).
RAY_PROCESS_MARKERS = ("gcs_server", "raylet", "ray::", "dashboard.py", "monitor.py",
                       "log_monitor.py", "runtime_env/agent", "dashboard/agent.py",
                       "ray.util.client.server", "default_worker.py")
# The namespace's init reaps orphans as a machine's init does: Ray's daemons are reparented to
# it, and `ray stop` waits its whole grace period (16 s) for processes left as zombies.
_INIT = """import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    signal.sigwaitinfo({signal.SIGCHLD})
"""
_SETUP = f"""set -e
ip link set lo up
mkdir -p /tmp/ray /run/sshd
mount -t tmpfs tmpfs /tmp/ray
echo ready
exec {sys.executable} -c '{_INIT}'
"""


def unavailable() -> str | None:
    """Why a sandbox cannot run here (None if it can): checked, not guessed."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs Linux and root (network/PID namespaces, an sshd logging in as root)"
    missing = [tool for tool in ("unshare", "nsenter", "ip", "ssh", "rsync")
               if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return (f"missing {', '.join(missing)}: install openssh-server rsync iproute2 "
                "(scripts/setup.sh does, as root)")
    probe = subprocess.run(["unshare", "--net", "--pid", "--mount", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net --pid --mount failed here: {probe.stderr.strip()}"
    return None


class Sandbox:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
             "bash", "-c", _SETUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(10)
            raise RuntimeError(f"sandbox did not start: {self.proc.stderr.read()}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.pid = int(children.split()[0])          # the namespace's init (_INIT)

    def _enter(self, cmd: list[str], cwd: Path | None = None) -> list[str]:
        # Entering a mount namespace resets the working directory unless --wd names one.
        return ["nsenter", "-t", str(self.pid), "--net", "--pid", "--mount",
                f"--wd={cwd or Path.cwd()}", "--", *cmd]

    def run(self, cmd: list[str] | str, timeout: float = 120, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a command inside; a string runs under bash. Output is captured, with stderr."""
        cmd = ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
        out = subprocess.run(self._enter(cmd, cwd), env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{cmd} exited {out.returncode}:\n{out.stdout[-6000:]}")
        return out

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        """A background process inside; it dies with the sandbox."""
        with log.open("w") as f:
            return subprocess.Popen(self._enter(cmd), env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT)

    def wait_port(self, port: int, timeout: float = 30) -> None:
        self.run(f"for i in $(seq {int(timeout * 10)}); do (exec 3<>/dev/tcp/127.0.0.1/{port}) "
                 "2>/dev/null && exit 0; sleep 0.1; done; exit 1", timeout=timeout + 10)

    def bind(self, source: Path, target: str) -> None:
        self.run(["bash", "-c", f"mkdir -p {target} && mount --bind {source} {target}"])

    def ray_processes(self) -> list[str]:
        # Zombies (state Z) have exited: a process the init has not reaped yet is not running.
        ps = self.run(["ps", "-eo", "pid,stat,args", "--no-headers"]).stdout.splitlines()
        return [line for line in ps if line.split()[1][0] != "Z"
                and any(m in line for m in RAY_PROCESS_MARKERS)]

    def close(self) -> None:
        # SIGKILL of unshare: --kill-child kills the namespace's init, the kernel the rest.
        self.proc.kill()
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class Sshd:
    """The test's own sshd on the sandbox's 127.0.0.1:22; `key` logs in as root."""

    def __init__(self, sandbox: Sandbox, root: Path, session_env: dict[str, str]):
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(root / name)], check=True)
        self.key = root / "user_key"
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        env_line = " ".join(f'"{k}={v}"' for k, v in session_env.items())
        (root / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1:22
HostKey {root / 'host_key'}
AuthorizedKeysFile {root / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {root / 'sshd.pid'}
SetEnv {env_line}
""")
        sandbox.run([SSHD, "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")])
        sandbox.wait_port(22)
