"""The benchmark's scheduling of targets measured together: they take turns in rounds, each sees all its requests."""

from __future__ import annotations

import argparse
import asyncio

from benchmarks.bench_serving import ROUND_PER_CLIENT, Sweep
from benchmarks.clients import Result
from benchmarks.workload import Request


def test_targets_measured_together_take_turns_in_rounds() -> None:
    args = argparse.Namespace(requests=10, requests_per_client=1, concurrency=[1], targets=["grpc", "rest"])
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
