"""Serving benchmark: chatgen against `vllm serve` and SMG, side by side in one run, on the same model and settings.

    .venv/bin/python -m benchmarks.bench_serving                         # embedded model; concurrency 1 8 32 64
    .venv/bin/python -m benchmarks.bench_serving --concurrency 1 8 --json out.json --plot out.png
    .venv/bin/python -m benchmarks.bench_serving --replay prompts.jsonl --model /models/Qwen3-0.6B
    .venv/bin/python -m benchmarks.bench_serving --model tiny            # serving-bound: the serving layers' cost
    .venv/bin/python -m benchmarks.bench_serving --engine-arg=--max-num-batched-tokens=4096   # any vLLM flag
    .venv/bin/python -m benchmarks.bench_serving --targets hf,transformers --concurrency 1 4  # the fallback engine
    .venv/bin/python -m benchmarks.bench_serving --simulator 20,2 --concurrency 1 8 32        # what Envoy adds
    .venv/bin/python -m benchmarks.bench_serving --smoke                 # a tiny sweep (CI runs it)

Targets: (a) `vllm serve`, vLLM's own OpenAI server, the baseline; (b) chatgen over gRPC; (c) chatgen over REST
through Envoy; (d) SMG, the Rust OpenAI gateway, in front of vLLM's own gRPC worker; and with --targets: (e)
vLLM's AsyncLLM in this process, the ceiling; (f) chatgen gRPC on its transformers fallback engine and (g)
transformers' own generate() on the same prompts, its baseline; (i) chatgen over gRPC with --coalesce tokens per
streamed chunk (per-request stream_interval), on (b)'s server: what stream coalescing gains; (j) chatgen over gRPC
with --frontends processes over its engine and (k) `vllm serve --api-server-count` as many. With --simulator
TTFT_MS,ITL_MS: only chatgen, on the token simulator (no model), over gRPC (b), REST (c) and REST from a bare HTTP
client (h): what Envoy adds.
The REST targets (a), (c) and (d) use httpx, the openai SDK's client; --http-client bare drives them with the bare
client instead, whose own cost per chunk is about the gRPC client's: where the benchmark shares the CPU with the
servers, or one Python client process cannot keep up with them, httpx's parsing caps the REST targets first.

All servers start first, with the engine settings of chatgen.engine.vllm_args (plus --engine-arg); then every
target takes its turn at every concurrency level, a few requests per client at a time, while the others sit idle,
so that the machine's drift touches all alike (--apart: one server at a time, for machines without the memory for
all; on a GPU, co-resident vLLM engines each get their share of --gpu-memory-utilization). All get the same
requests: a seeded synthetic chat workload (log-normal prompt and output lengths) or a JSONL replay, every request
streaming exactly its max_tokens (ignore_eos). Each (target, concurrency) run salts its prompts with a distinct
first word, so prefix caching (on, as in production) never serves one run from another's.

Reported per target and concurrency: requests/s, output tokens/s, TTFT p50/p99 and inter-token latency p50/p99
(ms), errors; then the throughput ratios b/a, b/d, c/a, c/b, c/d, b/e, f/g, h/b, i/b, j/b, k/a, j/k, the TTFT p50
ratios b/a, b/d, c/b, i/b, j/b, j/k and the TTFT p50 that Envoy adds (c - b, h - b). Each ratio comes with a 95 %
confidence interval from its rounds: round i of one target and round i of the other ran the same requests minutes
apart, so the ratio of their tokens/s (or median TTFTs) is one paired sample of it (t-interval of the mean log
ratio; at least 3 rounds), and a last row pools every level's pairs. On a GPU machine the same command runs
unchanged with the CUDA vLLM build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.clients import Result, frozen_heap
from benchmarks.in_process import engine_in_process, transformers_generate
from benchmarks.local_server import pct
from benchmarks.report import LABELS, LETTERS, Level, plot, pooled, print_report, ratios
from benchmarks.targets import (
    EngineSetup,
    Send,
    add_http_client_argument,
    chatgen_senders,
    openai_sender,
    smg_serve,
    vllm_serve,
)
from benchmarks.tiny_model import MODEL_HELP, bench_model
from benchmarks.workload import Request, replay, synthetic

ROUND_PER_CLIENT = 4

TARGETS = (
    "vllm", "smg", "grpc", "rest", "raw-rest", "engine", "hf", "transformers", "grpc-coalesced", "grpc-frontends",
    "vllm-api-servers",
)  # fmt: skip
# The targets one `chatgen serve` on vLLM answers.
CHATGEN_TARGETS = {"grpc", "rest", "raw-rest", "grpc-coalesced"}


def salted(requests: list[Request], salt: str) -> list[Request]:
    out = []
    for r in requests:
        first, *rest = r.messages
        out.append(replace(r, messages=({**first, "content": f"{salt} {first['content']}"}, *rest)))
    return out


async def run_requests(
    concurrency: int, requests: list[Request], send: Send, progress: Any
) -> tuple[list[Result], float]:
    """`concurrency` clients send `requests`, each taking the next as soon as its last one has finished."""
    queue = list(reversed(requests))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            results.append(await send(queue.pop()))
            progress.update(1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def summarize(
    target: str,
    concurrency: int,
    results: list[Result],
    seconds: float,
    rounds: list[float] | None = None,
    round_ttft_p50_ms: list[float] | None = None,
) -> Level:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft * 1000 for r in ok]
    itls = [gap * 1000 for r in ok for gap in r.itls]
    return Level(
        target,
        concurrency,
        len(results),
        len(ok),
        dict(Counter(r.error or "?" for r in results if not r.ok)),
        seconds,
        len(ok) / seconds,
        sum(r.output_tokens for r in ok) / seconds,
        pct(ttfts, 0.5),
        pct(ttfts, 0.99),
        pct(itls, 0.5),
        pct(itls, 0.99),
        rounds or [],
        round_ttft_p50_ms or [],
        sum(r.reconnected for r in results),
    )


class Sweep:
    def __init__(self, args: argparse.Namespace, workload: list[Request]) -> None:
        self.args = args
        self.workload = workload
        self.levels: list[Level] = []
        from tqdm import tqdm

        per_target = sum(self.count(c) for c in args.concurrency)
        self.progress = tqdm(total=per_target * len(args.targets), unit="req", file=sys.stderr, dynamic_ncols=True)

    def count(self, concurrency: int) -> int:
        return max(self.args.requests, self.args.requests_per_client * concurrency)

    def requests_for(self, target: str, concurrency: int) -> list[Request]:
        n = self.count(concurrency)
        picked = [self.workload[i % len(self.workload)] for i in range(n)]
        return salted(picked, f"{LETTERS[target]}{concurrency}")

    async def take_turns(self, senders: dict[str, Send], concurrency: int) -> None:
        """One level of several targets that share a server or a machine, taking turns in rounds of
        --round-per-client requests per client: the machine's slow drift then touches every target alike (one
        target after another, a 1 ms difference was lost in it). Each target's figures are over all its rounds;
        each round's tokens/s is kept as well, to pair with the other targets' same round."""
        work = {target: self.requests_for(target, concurrency) for target in senders}
        results: dict[str, list[Result]] = {target: [] for target in senders}
        seconds = dict.fromkeys(senders, 0.0)
        rounds: dict[str, list[float]] = {target: [] for target in senders}
        round_ttfts: dict[str, list[float]] = {target: [] for target in senders}
        size = self.args.round_per_client * concurrency
        for start in range(0, self.count(concurrency), size):
            for target, send in senders.items():
                self.progress.set_description(f"{LABELS[target]} c={concurrency}")
                done, took = await run_requests(concurrency, work[target][start : start + size], send, self.progress)
                results[target] += done
                seconds[target] += took
                rounds[target].append(sum(r.output_tokens for r in done if r.ok) / took)
                round_ttfts[target].append(pct([r.ttft * 1000 for r in done if r.ok], 0.5))
        for target in senders:
            self.levels.append(
                summarize(target, concurrency, results[target], seconds[target], rounds[target], round_ttfts[target])
            )

    async def warm_up(self, send: Send) -> None:
        for request in salted(self.workload[:2], "warmup"):
            await send(request)


# ---- targets ----------------------------------------------------------------------------------------------------


Senders = dict[str, Send]
Opener = Callable[[], contextlib.AbstractAsyncContextManager[Senders]]


@contextlib.asynccontextmanager
async def openai_server(
    serve: Any, setup: EngineSetup, target: str, max_connections: int, http_client: str
) -> AsyncIterator[Senders]:
    """(a) or (d): a server process with an OpenAI API, and `http_client` as its client."""
    with serve(setup) as served:
        async with openai_sender(served.base, setup.served_name, max_connections, http_client) as send:
            yield {target: send}


def coalesced(send: Send, interval: int) -> Send:
    """`send` with every request asking for `interval` tokens per chunk (vLLM's per-request stream_interval)."""

    async def send_coalesced(request: Request) -> Result:
        return await send(replace(request, stream_interval=interval))

    return send_coalesced


@contextlib.asynccontextmanager
async def chatgen(
    setup: EngineSetup, on: set[str], max_connections: int, http_client: str, coalesce: int, *flags: str
) -> AsyncIterator[Senders]:
    """(b), (c), (h) and (i): one `chatgen serve`, over gRPC, REST (`http_client`), REST (bare client) and gRPC
    with `coalesce` tokens per chunk."""
    async with chatgen_senders(setup, max_connections, *flags, http_client=http_client) as send:
        all_of = {
            "grpc": send.grpc,
            "rest": send.rest,
            "raw-rest": send.raw_rest,
            "grpc-coalesced": coalesced(send.grpc, coalesce),
        }
        yield {target: s for target, s in all_of.items() if target in on}


@contextlib.asynccontextmanager
async def frontends(setup: EngineSetup, count: int, max_connections: int) -> AsyncIterator[Senders]:
    """(j): a second `chatgen serve`, with `count` frontends over its engine core, over gRPC."""
    async with chatgen_senders(setup, max_connections, "--frontends", str(count)) as send:
        yield {"grpc-frontends": send.grpc}


@contextlib.asynccontextmanager
async def hf_engine(setup: EngineSetup) -> AsyncIterator[Senders]:
    """(f): chatgen's fallback engine (transformers, one generate() per request on a worker thread), over gRPC."""
    # vLLM's flags don't apply to this engine (chatgen refuses them for it).
    async with chatgen_senders(replace(setup, engine_argv=()), 8, "--engine", "hf") as send:
        yield {"hf": send.grpc}


def openers(args: argparse.Namespace, setup: EngineSetup) -> list[Opener]:
    """What serves the chosen targets: one opener per server (or in-process engine), in the order they start."""
    targets = set(args.targets)
    connections = max(args.concurrency) + 8
    if args.simulator:
        # No model runs: a fixed token schedule, so the only differences between (b), (c) and (h) are Envoy's.
        flags = ("--engine", "simulator", "--simulator-timing", f"{args.simulator},{args.output_len}")
        bare = replace(setup, engine_argv=())
        return [functools.partial(chatgen, bare, targets, connections, args.http_client, args.coalesce, *flags)]
    if not args.apart:
        # Every vLLM engine resident at once: on a GPU, each gets its share of the memory.
        engines = len(targets & {"vllm", "smg", "engine", "grpc-frontends", "vllm-api-servers"})
        engines += bool(targets & CHATGEN_TARGETS)
        setup = setup.sharing_gpu(engines)
    out: list[Opener] = []
    if "vllm" in targets:
        out.append(functools.partial(openai_server, vllm_serve, setup, "vllm", connections, args.http_client))
    if "vllm-api-servers" in targets:
        serve = functools.partial(vllm_serve, api_servers=args.frontends)
        out.append(functools.partial(openai_server, serve, setup, "vllm-api-servers", connections, args.http_client))
    if "smg" in targets:
        out.append(functools.partial(openai_server, smg_serve, setup, "smg", connections, args.http_client))
    if targets & CHATGEN_TARGETS:
        out.append(functools.partial(chatgen, setup, targets, connections, args.http_client, args.coalesce))
    if "grpc-frontends" in targets:
        out.append(functools.partial(frontends, setup, args.frontends, connections))
    if "engine" in targets:
        out.append(functools.partial(engine_in_process, setup))
    if "hf" in targets:
        out.append(functools.partial(hf_engine, setup))
    if "transformers" in targets:
        out.append(functools.partial(transformers_generate, setup))
    return out


async def run_sweep(sweep: Sweep, openers: list[Opener], apart: bool) -> None:
    """All servers up at once, every target taking its turn at every level, so that the machine's drift touches
    them alike (an idle server takes no CPU); or, with `apart`, one server at a time (its own targets still taking
    turns), for machines without the memory for all of them."""
    for group in [openers] if not apart else [[o] for o in openers]:
        async with contextlib.AsyncExitStack() as stack:
            senders: Senders = {}
            for open_ in group:
                senders.update(await stack.enter_async_context(open_()))
            for send in senders.values():
                await sweep.warm_up(send)
            with frozen_heap():
                for c in sweep.args.concurrency:
                    await sweep.take_turns(senders, c)


# ---- report -----------------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    choice = bench_model(args.model)
    setup = EngineSetup(
        choice.path, choice.served_name, args.max_model_len, max(args.concurrency), tuple(args.engine_arg), args.dtype
    )
    if args.replay:
        workload = replay(Path(args.replay), args.output_len)
    else:
        tokenizer = AutoTokenizer.from_pretrained(choice.path)
        size = max(args.requests, args.requests_per_client * max(args.concurrency))
        workload = synthetic(size, args.seed, tokenizer, args.input_len, args.output_len, args.max_model_len)
    if args.stream_interval > 1:
        workload = [replace(r, stream_interval=args.stream_interval) for r in workload]
    sweep = Sweep(args, workload)
    try:
        await run_sweep(sweep, openers(args, setup), args.apart)
    finally:
        sweep.progress.close()
    table = ratios(sweep.levels)
    together = pooled(sweep.levels)
    print_report(sweep.levels, table, together, args.http_client)
    report = {
        "settings": {
            "model": choice.path,
            "concurrency": args.concurrency,
            "engine_args": setup.vllm_argv(),
            "simulator": args.simulator,
            "http_client": args.http_client,
            "stream_interval": args.stream_interval,
            "coalesce": args.coalesce,
            "workload": {
                "replay": args.replay,
                "seed": args.seed,
                "input_median": args.input_len,
                "output_median": args.output_len,
                "prompts": len(workload),
            },
        },
        "levels": [asdict(lv) for lv in sweep.levels],
        "ratios": table,
        "pooled": together,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(sweep.levels, Path(args.plot))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument(
        "--targets",
        type=lambda s: s.split(","),
        default=list(TARGETS[:4]),
        help="comma-separated, of: vllm, smg, grpc, rest, raw-rest, engine, hf, transformers, grpc-coalesced, "
        "grpc-frontends, vllm-api-servers (default: the first four)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=16, help="requests per level, at least")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests per level = this x concurrency")
    parser.add_argument(
        "--round-per-client",
        type=int,
        default=ROUND_PER_CLIENT,
        help="targets take turns in rounds of this many requests per client (more rounds: finer interleaving and "
        "tighter confidence intervals for the ratios)",
    )
    parser.add_argument("--input-len", type=int, default=128, help="median prompt tokens (synthetic workload)")
    parser.add_argument("--output-len", type=int, default=64, help="median output tokens (synthetic workload)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="auto", help="weights dtype for every target (auto: float32 on CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", default=None, help="JSONL of requests instead of the synthetic workload")
    parser.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        help="a vLLM engine flag for every target, e.g. --engine-arg=--block-size=32",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--plot", default=None, help="also plot latency vs throughput to this PNG")
    parser.add_argument(
        "--simulator",
        default=None,
        metavar="TTFT_MS,ITL_MS",
        help="measure what the serving stack adds: chatgen gRPC vs REST on the token simulator (no model, no other "
        "target), e.g. --simulator 20,2",
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="start one server at a time (default: all at once, taking turns; needs memory for all of them)",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="every request of every target asks for this many tokens per streamed chunk (vLLM's per-request "
        "stream_interval; SMG does not take it); 1: the field is not sent",
    )
    parser.add_argument(
        "--coalesce",
        type=int,
        default=8,
        help="target grpc-coalesced (i): chatgen over gRPC with this stream_interval per request, on the same "
        "server as (b), taking turns with it (i/b: what coalescing gains)",
    )
    parser.add_argument(
        "--frontends",
        type=int,
        default=2,
        help="targets grpc-frontends (j) and vllm-api-servers (k): chatgen with this many frontends and `vllm "
        "serve --api-server-count` this many, each its own server (j/b: what the frontends gain; j/k: against vLLM's)",
    )
    add_http_client_argument(parser)  # for (a), (c), (d) and (k)
    parser.add_argument("--smoke", action="store_true", help="a tiny sweep that checks the harness still works")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.simulator:
        args.targets = ["grpc", "rest", "raw-rest"]
    if args.smoke:
        args.concurrency, args.requests, args.requests_per_client, args.round_per_client = [1, 4], 4, 1, 1
        args.input_len, args.output_len = 32, 8
    report = asyncio.run(main_async(args))
    if any(lv["ok"] < lv["requests"] for lv in report["levels"]):
        raise SystemExit(1)  # the report says which target failed what


if __name__ == "__main__":
    main()
