"""Multi-turn conversations over two replicas, side by side: the shared gateway's least request against
`balance: affinity` (each conversation's requests to one replica, by its key), on the real engine.

    .venv/bin/python -m benchmarks.affinity                     # the embedded model, 8 conversations of 6 turns
    .venv/bin/python -m benchmarks.affinity --conversations 16 --turns 8 --rounds 6 --json affinity.json

Two `chatgen serve` replicas (vLLM with its prefix cache, as served) behind two shared gateways that differ only in
`balance`, all up at once. In each round, for each gateway in turn (the order alternates): --conversations
conversations at once, each a closed loop of --turns streamed chat completions that carry the conversation's key
in `user`. Each conversation opens with its own system prompt (--system-len tokens, led by a text no other
conversation has, so that no two share a cached block); each turn adds a user message and the assistant's reply
of the turn before. The replies are fixed text, the same for every gateway, so both get exactly the same prompts.
Reported per gateway: vLLM's prefix-cache hit rate over the round (the replicas' vllm:prefix_cache_hits over
vllm:prefix_cache_queries, in prompt tokens), TTFT of first turns and of later turns (p50, p99), and affinity over
least_request per round with its 95 % interval, and the busier replica's share of the calls (`fuller`: 0.5 is an
even split).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.balancing import served, shared_gateway
from benchmarks.clients import Result, frozen_heap, sse_post
from benchmarks.local_server import LocalServer, local_server, pct
from benchmarks.report import paired_interval
from benchmarks.tiny_model import bench_model
from benchmarks.workload import WORDS

BALANCES = ("least_request", "affinity")


@dataclass
class Round:
    hit_rate: float
    first_ttft_p50_ms: float
    later_ttft_p50_ms: float
    later_ttft_p99_ms: float
    fuller_share: float  # the busier replica's share of the round's calls: 0.5 is an even split
    errors: int


@dataclass
class Balance:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(getattr(r, key) for r in self.rounds)


def prefix_cache(replica: LocalServer) -> tuple[float, float]:
    """This replica's prefix-cache hits and queries so far (prompt tokens; vLLM's counters on its /metrics)."""
    text = httpx.get(f"{replica.metrics_base}/metrics", timeout=5).text
    totals = {"vllm:prefix_cache_hits": 0.0, "vllm:prefix_cache_queries": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in totals:
                totals[name] += sample.value
    return totals["vllm:prefix_cache_hits"], totals["vllm:prefix_cache_queries"]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Conversation:
    key: str
    messages: list[dict[str, str]]


def conversations(tag: str, args: argparse.Namespace) -> list[Conversation]:
    """This round's conversations for one gateway: `tag` leads each system prompt, so none is cached yet."""
    rng = random.Random(f"{args.seed}-{tag}")
    # About 1.3 tokens a word for these words in SmolLM2's tokenizer: the lengths below are in words.
    system_words = max(1, round(args.system_len / 1.3))
    return [
        Conversation(f"{tag}-{i}", [{"role": "system", "content": f"{tag} {i}. {words(rng, system_words)}"}])
        for i in range(args.conversations)
    ]


async def turn(http: httpx.AsyncClient, model: str, conversation: Conversation, args: argparse.Namespace) -> Result:
    body: dict[str, Any] = {
        "model": model, "messages": conversation.messages, "max_tokens": args.output_len, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, "user": conversation.key,
    }  # fmt: skip
    return await sse_post(http, body)


async def one_round(port: int, model: str, replicas: list[LocalServer], tag: str, args: argparse.Namespace) -> Round:
    rng = random.Random(f"{args.seed}-{tag}-turns")
    turn_words = max(1, round(args.turn_len / 1.3))
    reply = words(random.Random(args.seed), max(1, round(args.output_len / 1.3)))
    before = [prefix_cache(r) for r in replicas]
    served_before = [served(r) for r in replicas]
    first: list[float] = []
    later: list[float] = []
    errors = 0

    async def talk(http: httpx.AsyncClient, conversation: Conversation) -> None:
        nonlocal errors
        for i in range(args.turns):
            conversation.messages.append({"role": "user", "content": words(rng, turn_words)})
            result = await turn(http, model, conversation, args)
            if not result.ok:
                errors += 1
            else:
                (first if i == 0 else later).append(result.ttft * 1000)
            conversation.messages.append({"role": "assistant", "content": reply})

    limits = httpx.Limits(max_connections=args.conversations)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as http:
        await asyncio.gather(*(talk(http, c) for c in conversations(tag, args)))
    after = [prefix_cache(r) for r in replicas]
    hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    calls = [served(r) - b for r, b in zip(replicas, served_before, strict=True)]
    rate = hits / queries if queries else float("nan")
    share = max(calls) / sum(calls) if any(calls) else float("nan")
    return Round(rate, pct(first, 0.5), pct(later, 0.5), pct(later, 0.99), share, errors)


def cores(replica: int, args: argparse.Namespace) -> dict[str, str]:
    """With --bind-cores, replica i's vLLM threads on core i: two engines that share every core slow each other
    down more than either gains from the second core, which hides what the balance changes."""
    return {"VLLM_CPU_OMP_THREADS_BIND": str(replica)} if args.bind_cores else {}


async def run(args: argparse.Namespace) -> list[Balance]:
    choice = bench_model(args.model)
    flags = (
        "--model", choice.path, "--served-model-name", choice.served_name, "--no-gateway",
        "--max-model-len", str(args.max_model_len), "--max-running", str(args.conversations),
    )  # fmt: skip
    balances = [Balance(b) for b in BALANCES]
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(local_server(*flags, metrics=True, env=cores(i, args))) for i in range(2)]
        ports = [stack.enter_context(shared_gateway(choice.served_name, replicas, b.name)) for b in balances]
        for k, port in enumerate(ports):
            await one_round(port, choice.served_name, replicas, f"warm{k}", args)
        with frozen_heap():
            for i in range(args.rounds):
                for k in [0, 1] if i % 2 == 0 else [1, 0]:
                    tag = f"r{i}{balances[k].name}"
                    balances[k].rounds.append(await one_round(ports[k], choice.served_name, replicas, tag, args))
                line = ", ".join(
                    f"{b.name} hits {r.hit_rate:.3f}, later-turn TTFT p50 {r.later_ttft_p50_ms:.0f} ms"
                    for b in balances
                    for r in b.rounds[-1:]
                )
                print(f"round {i + 1}/{args.rounds}: {line}", flush=True)
    return balances


def report(balances: list[Balance]) -> None:
    print(
        f"\n{'balance':>14}{'hit rate':>10}{'TTFT 1st p50':>14}{'later p50':>11}{'later p99':>11}"
        f"{'fuller':>8}{'errors':>8}"
    )
    for b in balances:
        print(
            f"{b.name:>14}{b.median('hit_rate'):>10.3f}{b.median('first_ttft_p50_ms'):>14.1f}"
            f"{b.median('later_ttft_p50_ms'):>11.1f}{b.median('later_ttft_p99_ms'):>11.1f}"
            f"{b.median('fuller_share'):>8.3f}"
            f"{sum(r.errors for r in b.rounds):>8}"
        )
    lr, affine = balances
    for key in ("hit_rate", "first_ttft_p50_ms", "later_ttft_p50_ms", "later_ttft_p99_ms"):
        interval = paired_interval([getattr(r, key) for r in affine.rounds], [getattr(r, key) for r in lr.rounds])
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "(too few rounds)"
        print(f"affinity / least_request, {key}: 95 % interval {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="as chatgen serve --model takes it (default: the embedded one)")
    parser.add_argument("--conversations", type=int, default=8, help="conversations at once")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-len", type=int, default=512, help="tokens of each conversation's system prompt")
    parser.add_argument("--turn-len", type=int, default=48, help="tokens of each user message")
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bind-cores", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
        help="each replica's vLLM threads on a core of its own (default: where there are two)",
    )  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    balances = asyncio.run(run(args))
    report(balances)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(b) for b in balances], indent=2))


if __name__ == "__main__":
    main()
