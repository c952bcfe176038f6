"""The benchmark's scheduling of targets measured together: they take turns in rounds, each sees all its requests."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics

import pytest

from benchmarks.bench_serving import ROUND_PER_CLIENT, Sweep
from benchmarks.clients import Result
from benchmarks.workload import Request


def test_targets_measured_together_take_turns_in_rounds() -> None:
    args = argparse.Namespace(
        requests=10, requests_per_client=1, round_per_client=ROUND_PER_CLIENT, concurrency=[1], targets=["grpc", "rest"]
    )
    workload = [Request(({"role": "user", "content": f"prompt {i}"},), max_tokens=i + 1) for i in range(10)]
    sweep = Sweep(args, workload)
    calls: list[tuple[str, str]] = []

    def sender(target: str):  # type: ignore[no-untyped-def]
        async def send(request: Request) -> Result:
            calls.append((target, request.messages[0]["content"]))
            return Result(ok=True, ttft=0.001 * request.max_tokens, output_tokens=request.max_tokens)

        return send

    asyncio.run(sweep.take_turns({"grpc": sender("grpc"), "rest": sender("rest")}, 1))
    sweep.progress.close()

    # Rounds of ROUND_PER_CLIENT requests per client, targets alternating: 4 gRPC, 4 REST, 4 gRPC, ... 2 REST.
    order = [target for target, _ in calls]
    rounds = [order[i : i + ROUND_PER_CLIENT] for i in range(0, 8, ROUND_PER_CLIENT)]
    assert ROUND_PER_CLIENT == 4 and rounds == [["grpc"] * 4, ["rest"] * 4]
    assert order[8:] == ["grpc"] * 4 + ["rest"] * 4 + ["grpc"] * 2 + ["rest"] * 2
    # Every target got every prompt once, in workload order, salted with its own letter and concurrency.
    for target, letter in (("grpc", "b1"), ("rest", "c1")):
        prompts = [p for t, p in calls if t == target]
        assert prompts == [f"{letter} prompt {i}" for i in range(10)]
    levels = {lv.target: lv for lv in sweep.levels}
    assert set(levels) == {"grpc", "rest"}
    for lv in levels.values():
        assert (lv.concurrency, lv.requests, lv.ok, lv.errors) == (1, 10, 10, {})
        assert lv.ttft_p50_ms == 5.0  # median (nearest rank) of 1..10 ms over all rounds; the last alone: 9
        assert lv.output_tokens_per_s == 55 / lv.seconds
        # One tokens/s figure per round: 1+2+3+4, 5+6+7+8 and 9+10 tokens over each round's own time.
        assert len(lv.rounds) == 3 and all(r > 0 for r in lv.rounds)


def test_all_servers_are_up_together_unless_apart() -> None:
    """run_sweep: by default every server starts before the first request and all take turns at each level;
    with apart, each server runs its whole sweep alone."""
    from benchmarks.bench_serving import run_sweep

    events: list[str] = []

    def opener(target: str):  # type: ignore[no-untyped-def]
        @contextlib.asynccontextmanager
        async def open_():  # type: ignore[no-untyped-def]
            events.append(f"start {target}")

            async def send(request: Request) -> Result:
                events.append(target)
                return Result(ok=True, ttft=0.001, output_tokens=1)

            yield {target: send}
            events.append(f"stop {target}")

        return open_

    for apart in (False, True):
        events.clear()
        args = argparse.Namespace(
            requests=4, requests_per_client=1, round_per_client=ROUND_PER_CLIENT, concurrency=[1, 2],
            targets=["vllm", "grpc"],
        )  # fmt: skip
        sweep = Sweep(args, [Request(({"role": "user", "content": "hi"},), max_tokens=1)] * 4)
        asyncio.run(run_sweep(sweep, [opener("vllm"), opener("grpc")], apart))
        sweep.progress.close()
        starts = [i for i, e in enumerate(events) if e.startswith("start")]
        stops = [i for i, e in enumerate(events) if e.startswith("stop")]
        sent = [e for e in events if not e.startswith(("start", "stop"))]
        # 2 warm-up requests each, then 4 per level and target.
        assert sent.count("vllm") == sent.count("grpc") == 2 + 4 + 4
        assert len(sweep.levels) == 4
        if not apart:
            assert starts == [0, 1] and min(stops) > max(i for i, e in enumerate(events) if e in ("vllm", "grpc"))
            assert sent[4:8] == ["vllm"] * 4  # after the warm-ups, targets take turns
            assert sent[8:12] == ["grpc"] * 4
        else:
            assert events.index("stop vllm") < events.index("start grpc")


def test_co_resident_engines_share_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.targets import EngineSetup

    setup = EngineSetup("/m", "m", 2048, 8, engine_argv=("--block-size=32",))
    assert setup.sharing_gpu(3) == setup  # on this CPU: nothing to share (each engine has its own KV space)
    monkeypatch.setattr("chatgen.engine.vllm_engine.cpu_only", lambda: False)
    shared = setup.sharing_gpu(3)
    assert shared.engine_argv == ("--gpu-memory-utilization=0.30", "--block-size=32")
    assert setup.sharing_gpu(1) == setup
    # The user's own --gpu-memory-utilization comes later on the command line, so it wins.
    assert shared.vllm_argv().index("--gpu-memory-utilization=0.30") < shared.vllm_argv().index("--block-size=32")


def test_ratio_intervals_come_from_paired_rounds() -> None:
    """Round i of each target ran the same requests: the ratio's 95 % interval is a t-interval of the paired log
    ratios, so drift that moves both targets of a pair alike does not widen it."""
    from benchmarks.report import Level, paired_interval, ratios

    # A slow drift (100 -> 40 tok/s) that touches both alike, and b always 2 % ahead of a: a tight interval at 1.02.
    a_rounds = [100.0, 80.0, 60.0, 40.0]
    b_rounds = [x * 1.02 for x in a_rounds]
    low, high = paired_interval(b_rounds, a_rounds)  # type: ignore[misc]
    assert low == pytest.approx(1.02) and high == pytest.approx(1.02)
    # Noisy pairs: log ratios of 0.10, -0.10, 0.05, -0.05 have mean 0 and sd 0.0913; t(0.975, 3) = 3.182.
    b_noisy = [100 * math.exp(0.10), 80 * math.exp(-0.10), 60 * math.exp(0.05), 40 * math.exp(-0.05)]
    low, high = paired_interval(b_noisy, a_rounds)  # type: ignore[misc]
    half = 3.182446 * statistics.stdev([0.10, -0.10, 0.05, -0.05]) / 2
    assert low == pytest.approx(math.exp(-half), rel=1e-5) and high == pytest.approx(math.exp(half), rel=1e-5)
    assert low < 1 < high
    # Too few rounds (or a round with nothing done) give no interval rather than a meaningless one.
    assert paired_interval([1.0, 2.0], [1.0, 2.0]) is None
    assert paired_interval([1.0, 0.0, 2.0], [1.0, 1.0, 2.0]) is None

    levels = [
        Level("vllm", 8, 32, 32, output_tokens_per_s=70.0, rounds=a_rounds),
        Level("grpc", 8, 32, 32, output_tokens_per_s=71.4, rounds=b_rounds),
        Level("smg", 8, 32, 32, output_tokens_per_s=70.0, rounds=a_rounds[:2]),
    ]
    row = ratios(levels)["8"]
    assert row["b/a"] == pytest.approx(1.02)
    assert row["b/a ci_low"] == pytest.approx(1.02) and row["b/a ci_high"] == pytest.approx(1.02)
    assert row["b/d"] == pytest.approx(1.02) and "b/d ci_low" not in row  # SMG ran two rounds only


def test_ttft_ratios_pair_the_rounds_medians() -> None:
    """TTFT p50 of b over a (below 1: b answers sooner), with an interval from each round's median TTFT; at
    concurrency 1 with one request per client per round, that pairs request i of b with request i of a."""
    from benchmarks.report import Level, ratios

    a_ttft = [1000.0, 1100.0, 900.0, 1050.0]
    b_ttft = [t * 0.95 for t in a_ttft]
    levels = [
        Level("vllm", 1, 4, 4, output_tokens_per_s=8.0, ttft_p50_ms=1000.0, rounds=[8.0] * 4, round_ttft_p50_ms=a_ttft),
        Level("grpc", 1, 4, 4, output_tokens_per_s=8.0, ttft_p50_ms=950.0, rounds=[8.0] * 4, round_ttft_p50_ms=b_ttft),
        Level("rest", 1, 4, 4, output_tokens_per_s=8.0, ttft_p50_ms=1045.0, rounds=[8.0] * 4),
    ]
    row = ratios(levels)["1"]
    assert row["ttft b/a"] == pytest.approx(0.95)  # with an interval: the geometric mean of the paired ratios
    assert row["ttft b/a ci_low"] == pytest.approx(0.95) and row["ttft b/a ci_high"] == pytest.approx(0.95)
    assert row["ttft c/b"] == pytest.approx(1.1) and "ttft c/b ci_low" not in row  # no rounds kept for c
    assert "ttft b/d" not in row  # no SMG in this run
    assert row["b/a"] == 1.0 and row["ttft_p50_c-b_ms"] == pytest.approx(95.0)


def test_each_rounds_ttft_median_is_kept() -> None:
    args = argparse.Namespace(
        requests=6, requests_per_client=1, round_per_client=2, concurrency=[1], targets=["grpc", "rest"]
    )
    workload = [Request(({"role": "user", "content": f"p{i}"},), max_tokens=i + 1) for i in range(6)]
    sweep = Sweep(args, workload)

    async def send(request: Request) -> Result:
        return Result(ok=True, ttft=0.001 * request.max_tokens, output_tokens=request.max_tokens)

    asyncio.run(sweep.take_turns({"grpc": send, "rest": send}, 1))
    sweep.progress.close()
    for lv in sweep.levels:
        # Rounds of 2 requests with TTFTs 1,2 / 3,4 / 5,6 ms; the nearest-rank median of two is the lower one.
        assert lv.round_ttft_p50_ms == [1.0, 3.0, 5.0]


def test_pooled_ratios_pair_every_levels_rounds() -> None:
    """All levels' paired rounds together: b is 2 % ahead at one level and 4 % at the other, so the pooled
    geometric mean lies between; TTFT pairs pool the same way; a pair with too few rounds anywhere gives nothing."""
    from benchmarks.report import Level, pooled

    def level(target: str, c: int, rounds: list[float], ttfts: list[float]) -> Level:
        return Level(target, c, 4, 4, rounds=rounds, round_ttft_p50_ms=ttfts)

    levels = [
        level("vllm", 1, [10.0, 11.0], [100.0, 110.0]),
        level("grpc", 1, [10.2, 11.22], [90.0, 99.0]),
        level("vllm", 8, [30.0, 33.0, 36.0], [500.0, 550.0, 600.0]),
        level("grpc", 8, [31.2, 34.32], [450.0, 495.0]),  # one round fewer: pairs stop at the shorter list
        level("smg", 8, [30.0], [500.0]),
    ]
    together = pooled(levels)
    assert together["b/a"] == pytest.approx(math.sqrt(math.sqrt(1.02 * 1.02 * 1.04 * 1.04)))
    assert together["b/a ci_low"] < 1.02 < 1.04 < together["b/a ci_high"]
    assert together["ttft b/a"] == pytest.approx(0.9) and together["ttft b/a ci_high"] == pytest.approx(0.9)
    assert "b/d" not in together and "ttft b/d" not in together  # one SMG round: no interval, no figure
