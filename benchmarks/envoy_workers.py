"""Envoy's worker threads side by side: REST throughput and Envoy's CPU per token for each --envoy-concurrency.

    .venv/bin/python -m benchmarks.envoy_workers                                  # 2 vs 1 workers, 64 streams
    .venv/bin/python -m benchmarks.envoy_workers --workers 4 2 1 --concurrency 32 --rounds 8 --json workers.json

One `chatgen serve` per worker count, all on the token simulator (no model: the serving stack and Envoy are the
bottleneck, which is where the worker count matters), all up at once. A bare HTTP/1.1 client (no client library's
cost) streams chat completions through Envoy to one server at a time, for --seconds each, in paired rounds whose
order rotates, so drift in the machine's speed falls on every worker count alike. Reported per worker count: the
median tokens/s and Envoy's CPU µs per token over the rounds, and each count's throughput as a ratio to the first
count's in the same round (median and range).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.clients import frozen_heap
from benchmarks.profile_serving import (
    add_workload_arguments,
    cpu_seconds,
    drive,
    envoy_child,
    prepare,
    simulator_flags,
)
from benchmarks.targets import ChatgenSenders, chatgen_senders
from benchmarks.workload import Request


@dataclass
class Round:
    tokens_per_s: float
    envoy_us_per_token: float
    errors: int


@dataclass
class WorkerCount:
    workers: int
    rounds: list[Round] = field(default_factory=list)
    # Throughput over the first worker count's in the same round.
    ratios: list[float] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(getattr(r, key) for r in self.rounds)


async def one_round(senders: ChatgenSenders, workload: list[Request], concurrency: int, seconds: float) -> Round:
    envoy = envoy_child(senders.server.pid)
    if envoy is None:
        raise RuntimeError("the server runs no Envoy")
    before, started = cpu_seconds(envoy), time.monotonic()
    results = await drive(senders.raw_rest, workload, concurrency, seconds)
    elapsed, envoy_cpu = time.monotonic() - started, cpu_seconds(envoy) - before
    tokens = sum(r.output_tokens for r in results if r.ok)
    return Round(tokens / elapsed, envoy_cpu / tokens * 1e6 if tokens else 0.0, sum(not r.ok for r in results))


async def one_paired_round(
    i: int, args: argparse.Namespace, counts: list[WorkerCount], servers: list[ChatgenSenders], workload: list[Request]
) -> None:
    """Round i: every worker count's server in turn (each round starting with the next), paired with the first."""
    order = [(i + k) % len(counts) for k in range(len(counts))]
    measured = {k: await one_round(servers[k], workload, args.concurrency, args.seconds) for k in order}
    first = measured[0].tokens_per_s
    for k, count in enumerate(counts):
        count.rounds.append(measured[k])
        count.ratios.append(measured[k].tokens_per_s / first if first else 0.0)
    print(
        f"round {i + 1}/{args.rounds}: "
        + ", ".join(f"{c.workers} workers {measured[k].tokens_per_s:.0f} tok/s" for k, c in enumerate(counts)),
        flush=True,
    )


async def run(args: argparse.Namespace) -> list[WorkerCount]:
    setup, workload = prepare(None, args)
    flags = simulator_flags(args.simulator, args.output_len)
    counts = [WorkerCount(w) for w in args.workers]
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for count in counts:
            flag = ("--envoy-concurrency", str(count.workers))
            servers.append(await stack.enter_async_context(chatgen_senders(setup, args.concurrency + 8, *flags, *flag)))
            for request in workload[:4]:
                await servers[-1].raw_rest(request)
        with frozen_heap():
            for i in range(args.rounds):
                await one_paired_round(i, args, counts, servers, workload)
    return counts


def report(counts: list[WorkerCount]) -> None:
    base = counts[0].workers
    print(f"\n{'workers':>8}{'tok/s':>9}{'envoy µs/tok':>14}{'errors':>8}   tok/s over {base} workers (median [range])")
    for c in counts:
        errors = sum(r.errors for r in c.rounds)
        spread = f"{statistics.median(c.ratios):.3f} [{min(c.ratios):.3f}, {max(c.ratios):.3f}]"
        tokens, envoy = c.median("tokens_per_s"), c.median("envoy_us_per_token")
        print(f"{c.workers:>8}{tokens:>9.0f}{envoy:>14.1f}{errors:>8}   {spread}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 1], help="Envoy worker counts; the first is the base"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per worker count and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--simulator", default="20,5", metavar="TTFT_MS,ITL_MS", help="the token simulator's timing")
    add_workload_arguments(parser)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if len(set(args.workers)) != len(args.workers) or min(args.workers) < 1:
        parser.error("--workers: distinct counts of at least 1")
    counts = asyncio.run(run(args))
    report(counts)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in counts], indent=2))


if __name__ == "__main__":
    main()
