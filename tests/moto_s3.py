"""A real AWS API server for tests: moto's, on 127.0.0.1, in its own process.

    with moto_server() as endpoint:          # "http://127.0.0.1:PORT"
        ...

S3 (and EC2, IAM) speak the real protocol over loopback; nothing leaves the machine. The server
is killed, with its process group, on exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from processes import guard, kill_tree

__all__ = ["moto_server", "free_port", "TEST_CREDENTIALS", "s3_uri"]

# What boto3 and pyarrow read; moto accepts any key unless told to check them.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """Start moto_server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], env={**os.environ, **(env or {})},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + guard(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "moto_server exited at start"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_tree(server)


def s3_uri(endpoint: str, bucket: str, prefix: str = "") -> str:
    """An s3:// URI on that server, its options in the query (as pyarrow and Ray take it)."""
    host = endpoint.removeprefix("http://")
    path = f"{bucket}/{prefix}".rstrip("/")
    return f"s3://{path}?endpoint_override={host}&scheme=http&region=us-east-1"
