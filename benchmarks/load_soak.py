"""Load and soak: N concurrent streaming clients over gRPC and REST for a fixed time, some cancelled at random.

    .venv/bin/python -m benchmarks.load_soak                              # 30 s, 32 clients, token simulator
    .venv/bin/python -m benchmarks.load_soak --duration 900 --concurrency 64 --json soak.json
    .venv/bin/python -m benchmarks.load_soak --engine vllm                # the real engine instead
    .venv/bin/python -m benchmarks.load_soak --grpc 127.0.0.1:50051 --http http://127.0.0.1:8000 \\
        --metrics http://127.0.0.1:9400 --server-pid PID                  # a server that is already running

Without addresses it starts `chatgen serve --engine simulator` (the TOKEN SIMULATOR: fixed fake token timing, no
model) so that the serving stack is what is loaded. Only loopback addresses are accepted: this is a bounded test
for your own machine, not a tool to point at someone's service.

Each client loops until the time is up: it streams one chat completion (half the clients over gRPC, half over
REST/SSE through Envoy) and, with probability --cancel-fraction, drops it after a random number of tokens (gRPC
cancel / closed HTTP connection); with probability --error-fraction it sends an invalid request instead (a 400 /
INVALID_ARGUMENT, counted as "rejected"). A 429 / RESOURCE_EXHAUSTED is honoured by waiting its Retry-After.
Reported: streams served and cancelled, errors by kind, latency and time-to-first-token p50/p99, server memory
(RSS of chatgen and its children) before and after and, per process, sampled every --sample-every seconds with
its slope after the first --warmup-share of the run (benchmarks.rss), and leaked engine requests — what the
engine still holds once all clients are gone, which must be 0. Exit status 1 when anything leaked or an
unexpected error kind occurred.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import random
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil

from benchmarks.local_server import LocalServer, local_server, pct
from benchmarks.rss import RssSampler, Series, Trend
from chatgen.client import convert
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

# Outcomes a healthy server produces under this load: finished, dropped by the client, turned away with 429, or
# an invalid request refused.
EXPECTED = {"ok", "cancelled", "overloaded", "rejected"}
PROMPTS = ["Tell me about the sea.", "Write a haiku about trains.", "Explain gravity to a child.", "Describe a city."]


@dataclass
class Outcome:
    protocol: str
    kind: str
    latency_s: float | None = None
    ttft_s: float | None = None
    retry_after_s: float = 0.0


@dataclass
class Report:
    duration_s: float
    concurrency: int
    started: int
    served: int
    cancelled: int
    errors: dict[str, int]
    by_protocol: dict[str, dict[str, int]]
    latency_p50_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    rss_before_mib: float
    rss_after_mib: float
    leaked_engine_requests: float
    admitted_after: float
    waiting_after: float
    rss: list[Trend] = field(default_factory=list)
    rss_series: list[Series] = field(default_factory=list)  # every sample; written to --json only
    unexpected: list[str] = field(default_factory=list)


def require_loopback(address: str) -> None:
    host = urllib.parse.urlsplit(address if "://" in address else f"//{address}").hostname or ""
    resolved = socket.gethostbyname(host)
    if not ipaddress.ip_address(resolved).is_loopback:
        raise SystemExit(f"refusing {address}: the load test only targets loopback addresses")


def metric(metrics_base: str, name: str) -> float:
    for line in httpx.get(f"{metrics_base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


# Added to a request that is to be refused: out of range (0 to 2), so the validation layer answers 400.
INVALID = {"temperature": 5.0}


async def grpc_stream(
    stub: pb_grpc.ChatServiceStub, model: str, text: str, max_tokens: int, cancel_at: int | None, invalid: bool
) -> Outcome:
    start = time.perf_counter()
    ttft = None
    tokens = 0
    params = {"max_tokens": max_tokens, **(INVALID if invalid else {})}
    call = stub.StreamChatCompletion(convert.chat_request(model, [{"role": "user", "content": text}], params))
    try:
        async for chunk in call:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
                ttft = ttft or time.perf_counter() - start
                if cancel_at is not None and tokens >= cancel_at:
                    call.cancel()
                    return Outcome("grpc", "cancelled", ttft_s=ttft)
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        kinds = {grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded", grpc.StatusCode.INVALID_ARGUMENT: "rejected"}
        kind = kinds.get(exc.code(), f"grpc:{exc.code().name}")
        return Outcome("grpc", kind, retry_after_s=float(trailers.get("retry-after", 0) or 0))
    return Outcome("grpc", "ok", time.perf_counter() - start, ttft)


async def rest_stream(
    http: httpx.AsyncClient, model: str, text: str, max_tokens: int, cancel_at: int | None, invalid: bool
) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": True}
    body |= INVALID if invalid else {}
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            code = response.json().get("error", {}).get("code") if response.content else None
            kinds = {429: "overloaded", 400: "rejected"}
            kind = kinds.get(response.status_code, f"http:{response.status_code}:{code}")
            return Outcome("rest", kind, retry_after_s=float(response.headers.get("retry-after", 0)))
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                return Outcome("rest", f"sse:{chunk['error'].get('code')}")
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                ttft = ttft or time.perf_counter() - start
                if cancel_at is not None and tokens >= cancel_at:
                    return Outcome("rest", "cancelled", ttft_s=ttft)  # leaving the block closes the connection
    return Outcome("rest", "ok", time.perf_counter() - start, ttft)


async def drive(server: LocalServer, args: argparse.Namespace, model: str) -> list[Outcome]:
    rng = random.Random(args.seed)
    stop_at = time.monotonic() + args.duration
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency)
    async with (
        grpc.aio.insecure_channel(server.grpc_address) as channel,
        httpx.AsyncClient(base_url=server.http_base, timeout=120, limits=limits) as http,
    ):
        stub = pb_grpc.ChatServiceStub(channel)

        async def client(index: int) -> None:
            while time.monotonic() < stop_at:
                cancel_at = (
                    rng.randint(1, max(1, args.max_tokens // 2)) if rng.random() < args.cancel_fraction else None
                )
                text = rng.choice(PROMPTS)
                invalid = rng.random() < args.error_fraction
                try:
                    if index % 2 == 0:
                        outcome = await grpc_stream(stub, model, text, args.max_tokens, cancel_at, invalid)
                    else:
                        outcome = await rest_stream(http, model, text, args.max_tokens, cancel_at, invalid)
                except (httpx.HTTPError, OSError) as exc:
                    outcome = Outcome("grpc" if index % 2 == 0 else "rest", f"client:{type(exc).__name__}")
                outcomes.append(outcome)
                if outcome.retry_after_s:
                    await asyncio.sleep(min(outcome.retry_after_s, max(0.0, stop_at - time.monotonic())))

        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
    return outcomes


def wait_idle(metrics_base: str, timeout: float = 15) -> float:
    deadline = time.monotonic() + timeout
    while (running := metric(metrics_base, "chatgen_engine_running_requests")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


@contextmanager
def target(args: argparse.Namespace) -> Iterator[LocalServer]:
    if args.grpc or args.http:
        if not (args.grpc and args.http and args.metrics and args.server_pid):
            raise SystemExit("--grpc, --http, --metrics and --server-pid go together")
        for address in (args.grpc, args.http, args.metrics):
            require_loopback(address)
        yield LocalServer(args.server_pid, args.grpc, args.http.rstrip("/"), args.metrics.rstrip("/"))
        return
    flags = ["--engine", args.engine, "--simulator-timing", args.simulator_timing, *args.serve_arg]
    print(f"starting chatgen serve {' '.join(flags)} ...", file=sys.stderr, flush=True)
    with local_server(*flags, metrics=True) as server:
        yield server


async def main_async(args: argparse.Namespace) -> Report:
    with target(args) as server:
        assert server.metrics_base is not None
        model = httpx.get(f"{server.http_base}/v1/models", timeout=30).json()["data"][0]["id"]
        rss_before = rss_mib(server.pid)
        print(f"driving {args.concurrency} clients for {args.duration:g} s ...", file=sys.stderr, flush=True)
        sampler, sampled = RssSampler(server.pid, args.sample_every), asyncio.Event()
        sampling = asyncio.create_task(sampler.run(sampled))
        started = time.monotonic()
        outcomes = await drive(server, args, model)
        elapsed = time.monotonic() - started
        sampled.set()
        await sampling
        sampler.sample()  # the last sample at the end of the load
        leaked = wait_idle(server.metrics_base)
        rss_after = rss_mib(server.pid)
        admitted = metric(server.metrics_base, "chatgen_admitted_slots")
        waiting = metric(server.metrics_base, "chatgen_waiting_slots")

    kinds = collections.Counter(o.kind for o in outcomes)
    by_protocol: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (protocol, kind), count in collections.Counter((o.protocol, o.kind) for o in outcomes).items():
        by_protocol[protocol][kind] = count
    latencies = [o.latency_s * 1000 for o in outcomes if o.latency_s is not None]
    ttfts = [o.ttft_s * 1000 for o in outcomes if o.ttft_s is not None]
    unexpected = sorted(k for k in kinds if k not in EXPECTED)
    return Report(
        duration_s=round(elapsed, 2),
        concurrency=args.concurrency,
        started=len(outcomes),
        served=kinds["ok"],
        cancelled=kinds["cancelled"],
        errors={k: v for k, v in kinds.items() if k not in ("ok", "cancelled")},
        by_protocol=dict(by_protocol),
        latency_p50_ms=round(pct(latencies, 0.5), 1),
        latency_p99_ms=round(pct(latencies, 0.99), 1),
        ttft_p50_ms=round(pct(ttfts, 0.5), 1),
        ttft_p99_ms=round(pct(ttfts, 0.99), 1),
        rss_before_mib=round(rss_before, 1),
        rss_after_mib=round(rss_after, 1),
        leaked_engine_requests=leaked,
        admitted_after=admitted,
        waiting_after=waiting,
        rss=sampler.trends(args.warmup_share),
        rss_series=list(sampler.series.values()),
        unexpected=unexpected,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent streaming clients")
    parser.add_argument("--cancel-fraction", type=float, default=0.2, help="share of streams dropped midway")
    parser.add_argument("--error-fraction", type=float, default=0.1, help="share of requests sent invalid")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-share", type=float, default=0.25, help="share of the run before slopes count")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="simulator", help="engine of the server this script starts")
    parser.add_argument("--simulator-timing", default="50,10,64", help="TTFT_MS,ITL_MS,TOKENS for the simulator")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `chatgen serve` flag (repeatable)")
    parser.add_argument("--grpc", default=None, help="address of a running server (loopback only)")
    parser.add_argument("--http", default=None, help="REST base URL of a running server (loopback only)")
    parser.add_argument("--metrics", default=None, help="metrics base URL of a running server (loopback only)")
    parser.add_argument("--server-pid", type=int, default=None, help="PID of a running server, for its memory")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    everything = asdict(report)
    print(json.dumps({k: v for k, v in everything.items() if k != "rss_series"}, indent=2))
    for t in report.rss:
        print(
            f"{t.role:>22} pid {t.pid:>7}: {t.first_mib:8.1f} -> {t.last_mib:8.1f} MiB (max {t.max_mib:.1f}), "
            f"slope {t.slope_mib_per_min:+.3f} MiB/min",
            file=sys.stderr,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(everything))
    if report.leaked_engine_requests or report.admitted_after or report.waiting_after or report.unexpected:
        print("FAILED: leaked engine requests or unexpected errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
