"""`chatgen serve` started on free loopback ports for a benchmark, and the small helpers benchmarks share."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Every port free_port has handed out in this process: a server's ports are picked together and bound later, so
# a check by binding cannot see that an earlier pick (not listening yet) already holds a port.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range, and never one this process was given before. A port the
    kernel hands out (bind to port 0) is one it may also give the local end of any outgoing connection, and a
    server given one binds it only later (Envoy once the engine has loaded, tens of seconds on): in a busy test run
    a connection took it first. Below the range, nothing but another listener can take it."""
    low, _ = _ephemeral_ports()
    first = 10000 if low > 12000 else 1024
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                # The wildcard address: taken if anything listens on the port, whichever address it bound.
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {first}..{low - 1}")


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
def local_server(*flags: str, metrics: bool = False, env: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """Run `chatgen serve *flags` on 127.0.0.1 until the block ends (then SIGTERM, as a supervisor would), with
    `env` added to this process's environment."""
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    metrics_port = free_port() if metrics else 0
    cmd = [
        sys.executable, "-m", "chatgen", "serve", "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--envoy-admin-port", str(admin_port),
        "--metrics-port", str(metrics_port), *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
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
