"""A real redis-server (Debian's package) on a free port, for the tests of the Responses API's shared store."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from benchmarks.local_server import free_port


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """redis://127.0.0.1:<port>/0 of a fresh redis-server with no persistence; stopped afterwards."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (scripts/install.sh installs Debian's package)"
    port = free_port()
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
