"""The bounded load script against a real `chatgen serve` (token simulator engine, real gRPC server and Envoy):
streams over both protocols, random cancellations, an admission queue small enough to overflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_load_with_cancellations_and_overload_leaks_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "benchmarks.load_soak", "--duration", "8", "--concurrency", "16",
        "--cancel-fraction", "0.25", "--json", str(out),
        "--serve-arg=--max-running", "--serve-arg=6", "--serve-arg=--max-waiting", "--serve-arg=4",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["leaked_engine_requests"] == 0
    assert report["admitted_after"] == 0 and report["waiting_after"] == 0
    # Only what a healthy, overloaded server may answer: finished, dropped by the client, 429.
    assert set(report["errors"]) <= {"overloaded"}
    assert report["errors"].get("overloaded", 0) > 0  # 16 clients > 6 running + 4 waiting
    for protocol in ("grpc", "rest"):
        assert report["by_protocol"][protocol]["ok"] >= 5
        assert report["by_protocol"][protocol].get("cancelled", 0) >= 1
    assert report["served"] + report["cancelled"] + report["errors"]["overloaded"] == report["started"]
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]


def test_load_script_refuses_non_loopback_targets() -> None:
    cmd = [
        sys.executable, "-m", "benchmarks.load_soak", "--grpc", "10.1.2.3:50051", "--http", "http://10.1.2.3:8000",
        "--metrics", "http://10.1.2.3:9400", "--server-pid", "1",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "only targets loopback" in result.stderr
