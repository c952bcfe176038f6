"""`chatgen serve` and its Envoy child live and die together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def start(tmp_path: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "chatgen", "serve", "--engine", "hf", "--host", "127.0.0.1",
        "--grpc-port", str(free_port()), "--http-port", str(free_port()), "--envoy-admin-port", str(free_port()),
        "--metrics-port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "CHATGEN_RUN_DIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[chatgen] ready:" in line:
            return proc
    raise AssertionError(f"chatgen serve exited with {proc.wait()}")


def envoy_pid(parent: int) -> int:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        if Path(f"/proc/{pid}/exe").resolve().name == "envoy":
            return int(pid)
    raise AssertionError(f"no envoy child among {children}")


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_envoy_dies_when_chatgen_is_killed(tmp_path: Path, model_dir: Path) -> None:
    proc = start(tmp_path)
    envoy = envoy_pid(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert gone(envoy, 10), "Envoy outlived a SIGKILLed chatgen"


def test_chatgen_exits_nonzero_when_envoy_dies(tmp_path: Path, model_dir: Path) -> None:
    proc = start(tmp_path)
    os.kill(envoy_pid(proc.pid), signal.SIGKILL)
    assert proc.wait(60) == 1


def test_sigterm_stops_both_cleanly(tmp_path: Path, model_dir: Path) -> None:
    proc = start(tmp_path)
    envoy = envoy_pid(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert gone(envoy, 5)
