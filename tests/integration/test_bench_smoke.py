"""The serving benchmark's smoke run (a tiny sweep), so the harness cannot rot: it must start `vllm serve` and
`chatgen serve`, send every request without an error, and write its table, JSON and plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_benchmark_smoke_run(tmp_path: Path, model_dir: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serving", "--smoke", "--json", str(out), "--plot", str(png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    levels = report["levels"]
    assert {(lv["target"], lv["concurrency"]) for lv in levels} == {
        (t, c) for t in ("vllm", "grpc", "rest") for c in (1, 4)
    }
    for lv in levels:
        assert lv["errors"] == {} and lv["ok"] == lv["requests"] >= 4, lv
        assert lv["output_tokens_per_s"] > 0 and lv["ttft_p50_ms"] > 0 and lv["itl_p50_ms"] > 0, lv
    # Every request asked for its exact max_tokens (ignore_eos): the same work on every target.
    tokens = {lv["target"]: lv["output_tokens_per_s"] * lv["seconds"] for lv in levels if lv["concurrency"] == 4}
    assert len({round(t) for t in tokens.values()}) == 1, tokens
    for concurrency in ("1", "4"):
        row = report["ratios"][concurrency]
        for key in ("b/a", "c/a", "c/b"):
            assert math.isfinite(row[key]) and row[key] > 0, row
    assert "--enable-prefix-caching" in report["settings"]["engine_args"]
    assert "(a) vllm serve" in result.stdout and "(c) chatgen REST" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
