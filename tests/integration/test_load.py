"""The bounded load script against a real `chatgen serve` (token simulator engine, real gRPC server and Envoy):
streams over both protocols, random cancellations, invalid requests, an admission queue small enough to overflow,
and the memory of each process sampled as it runs."""

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
        "--cancel-fraction", "0.25", "--error-fraction", "0.2", "--sample-every", "1", "--json", str(out),
        "--serve-arg=--max-running", "--serve-arg=6", "--serve-arg=--max-waiting", "--serve-arg=4",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["leaked_engine_requests"] == 0
    assert report["admitted_after"] == 0 and report["waiting_after"] == 0
    # Only what a healthy, overloaded server may answer: finished, dropped by the client, 429, 400.
    assert set(report["errors"]) <= {"overloaded", "rejected"}
    assert report["errors"].get("overloaded", 0) > 0  # 16 clients > 6 running + 4 waiting
    assert report["errors"].get("rejected", 0) > 0
    for protocol in ("grpc", "rest"):
        assert report["by_protocol"][protocol]["ok"] >= 5
        assert report["by_protocol"][protocol].get("cancelled", 0) >= 1
    assert report["served"] + report["cancelled"] + sum(report["errors"].values()) == report["started"]
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    # chatgen and its Envoy, each sampled about once a second for the 8 s, each with a slope.
    trends = {t["role"]: t for t in report["rss"]}
    assert {"chatgen", "envoy"} <= set(trends), trends
    for t in trends.values():
        assert (
            t["samples"] >= 5
            and t["max_mib"] >= t["first_mib"] > 0
            and t["slope_mib_per_min"] == t["slope_mib_per_min"]
        )
    assert {s["role"] for s in report["rss_series"]} == set(trends)


def test_load_script_refuses_non_loopback_targets() -> None:
    cmd = [
        sys.executable, "-m", "benchmarks.load_soak", "--grpc", "10.1.2.3:50051", "--http", "http://10.1.2.3:8000",
        "--metrics", "http://10.1.2.3:9400", "--server-pid", "1",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "only targets loopback" in result.stderr
