"""`chatgen serve` started on free loopback ports for a benchmark, and the small helpers benchmarks share."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class LocalServer:
    pid: int
    grpc_address: str
    http_base: str
    metrics_base: str | None


@contextlib.contextmanager
def local_server(*flags: str, metrics: bool = False) -> Iterator[LocalServer]:
    """Run `chatgen serve *flags` on 127.0.0.1 until the block ends (then SIGTERM, as a supervisor would)."""
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    metrics_port = free_port() if metrics else 0
    cmd = [
        sys.executable, "-m", "chatgen", "serve", "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--envoy-admin-port", str(admin_port),
        "--metrics-port", str(metrics_port), *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[chatgen] ready:" in line:
            break
    else:
        raise RuntimeError(f"chatgen serve exited with {proc.wait()}")
    # Keep draining the server's output so it never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield LocalServer(
            proc.pid,
            f"127.0.0.1:{grpc_port}",
            f"http://127.0.0.1:{http_port}",
            f"http://127.0.0.1:{metrics_port}" if metrics else None,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
