"""The benchmarks' smoke runs (tiny sweeps), so none can rot: the serving benchmark must start `vllm serve`, SMG,
`chatgen serve` (vLLM and hf engines) and transformers in-process, all at once as it does by default, send every
request without an error, and write its table, JSON and plot; the profiler must sample a loaded server; the Envoy
worker comparison must run its servers' rounds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

TARGETS = ("vllm", "smg", "grpc", "rest", "hf", "transformers")


def test_benchmark_smoke_run(tmp_path: Path, model_dir: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    command = [sys.executable, "-m", "benchmarks.bench_serving", "--smoke", "--targets", ",".join(TARGETS)]
    # The bare HTTP client here (its parsing of `vllm serve`'s and SMG's streams is what this run can check);
    # httpx, the default, drives REST in the simulator run below.
    command += ["--http-client", "bare"]
    result = subprocess.run(
        [*command, "--json", str(out), "--plot", str(png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        # Three vLLM engines are resident at once: 1 GiB of KV cache each is plenty for 4 requests of 8 tokens.
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["http_client"] == "bare"
    levels = report["levels"]
    assert {(lv["target"], lv["concurrency"]) for lv in levels} == {(t, c) for t in TARGETS for c in (1, 4)}
    for lv in levels:
        assert lv["errors"] == {} and lv["ok"] == lv["requests"] >= 4, lv
        assert lv["output_tokens_per_s"] > 0 and lv["ttft_p50_ms"] > 0 and lv["itl_p50_ms"] > 0, lv
    # Every request asked for its exact max_tokens (ignore_eos): the same work on every target.
    tokens = {lv["target"]: lv["output_tokens_per_s"] * lv["seconds"] for lv in levels if lv["concurrency"] == 4}
    assert set(tokens) == set(TARGETS)
    assert len({round(t) for t in tokens.values()}) == 1, tokens
    for concurrency in ("1", "4"):
        row = report["ratios"][concurrency]
        for key in ("b/a", "b/d", "c/a", "c/b", "c/d", "f/g"):
            assert math.isfinite(row[key]) and row[key] > 0, row
    # The smoke run takes turns one request per client at a time: 4 rounds at concurrency 1 (enough for the
    # ratios' confidence intervals), 1 at 4 (not enough: none is made up).
    assert {(lv["concurrency"], len(lv["rounds"])) for lv in levels} == {(1, 4), (4, 1)}
    for key in ("b/a", "b/d", "c/b", "f/g"):
        low, high = report["ratios"]["1"][f"{key} ci_low"], report["ratios"]["1"][f"{key} ci_high"]
        assert 0 < low <= high, report["ratios"]["1"]
    assert not any(k.endswith("ci_low") for k in report["ratios"]["4"])
    assert "95 % confidence interval from paired rounds" in result.stdout
    assert "--enable-prefix-caching" in report["settings"]["engine_args"]
    for label in ("(a) vllm serve", "(c) chatgen REST", "(d) SMG", "(f) chatgen gRPC, hf engine", "(g) transformers"):
        assert label in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profiler_smoke_run(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "profile.json"
    result = subprocess.run(
        # On the token simulator the serving process is busy enough to sample in a few seconds.
        [sys.executable, "-m", "benchmarks.profile_serving", "--simulator", "5,1", "--seconds", "5",
         "--concurrency", "4", "--output-len", "16", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    profiles = {p["protocol"]: p for p in json.loads(out.read_text())}
    assert set(profiles) == {"grpc", "rest"}
    for p in profiles.values():
        assert p["errors"] == 0 and p["output_tokens"] > 0 and p["server_us_per_token"] > 0, p
        # The simulator's engine yields one token at a time, and the stream relays each one as it comes.
        assert 1.0 <= p["tokens_per_chunk"] < 1.1, p
        # The sampler saw the serving process at work, and chatgen's own code among it.
        assert p["samples"] > 50 and abs(sum(p["layers"].values()) - 1) < 1e-6, p
        assert p["layers"].get("chatgen", 0) > 0 and p["chatgen_functions"], p
    # Only the REST path goes through Envoy.
    assert profiles["rest"]["envoy_cpu_s"] > 0 and profiles["grpc"]["envoy_cpu_s"] == 0


def test_envoy_overhead_run_on_the_token_simulator(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "sim.json"
    command = [sys.executable, "-m", "benchmarks.bench_serving", "--simulator", "5,1", "--concurrency", "1", "2"]
    result = subprocess.run(
        [*command, "--requests", "10", "--output-len", "8", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["simulator"] == "5,1" and report["settings"]["http_client"] == "httpx"
    levels = report["levels"]
    assert {(lv["target"], lv["concurrency"]) for lv in levels} == {
        (t, c) for t in ("grpc", "rest", "raw-rest") for c in (1, 2)
    }
    for lv in levels:
        assert lv["errors"] == {} and lv["ok"] == lv["requests"] >= 10, lv
        # The simulator's first token comes after 5 ms: nothing can be faster than that.
        assert lv["ttft_p50_ms"] >= 5, lv
    for row in report["ratios"].values():
        assert {"c/b", "h/b", "ttft_p50_c-b_ms", "ttft_p50_h-b_ms"} <= set(row), row


def test_envoy_workers_smoke_run(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "workers.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.envoy_workers", "--workers", "2", "1", "--concurrency", "4",
         "--seconds", "1", "--rounds", "2", "--simulator", "5,1", "--output-len", "16", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = json.loads(out.read_text())
    assert [c["workers"] for c in counts] == [2, 1]
    for c in counts:
        assert len(c["rounds"]) == len(c["ratios"]) == 2, c
        for r in c["rounds"]:
            assert r["errors"] == 0 and r["tokens_per_s"] > 0 and r["envoy_us_per_token"] > 0, r
    assert counts[0]["ratios"] == [1.0, 1.0]
    assert all(ratio > 0 for ratio in counts[1]["ratios"])
    assert "tok/s over 2 workers" in result.stdout
