"""The shared gateway's balancing side by side: least request against the replicas' own load reports (ORCA, Envoy's
client_side_weighted_round_robin), over the same replicas of unequal capacity.

    .venv/bin/python -m benchmarks.balancing                            # replicas of --max-running 2, 16, 16
    .venv/bin/python -m benchmarks.balancing --capacities 4 8 16 --clients 24 --rounds 8 --json balancing.json

Token-simulator replicas (the real server: tokenizer, admission, servicers, gRPC; no model), each with its own
--max-running, behind two shared gateways (`chatgen gateway --backends`) that differ only in `balance`, all up at
once. A bare HTTP/1.1 client streams chat completions through one gateway at a time, --seconds each, in paired
rounds whose order alternates. Reported per gateway: the share of the streams each replica served (from the
replicas' own /metrics), tokens/s and TTFT p50/p99, and load_reports over least_request per round with its 95 %
interval. A replica's queue (running at its --max-running, the rest waiting) is what the balancer should avoid:
its streams' first tokens wait for a slot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.clients import RawHttp, frozen_heap
from benchmarks.local_server import LocalServer, free_port, local_server, pct
from benchmarks.profile_serving import add_workload_arguments, drive, prepare, simulator_flags
from benchmarks.report import paired_interval
from benchmarks.workload import Request

BALANCES = ("least_request", "load_reports")


@dataclass
class Round:
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int
    # Streams each replica finished in this round, in --capacities order.
    served: list[float]


@dataclass
class Balance:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def shares(self) -> list[float]:
        totals = [sum(r.served[i] for r in self.rounds) for i in range(len(self.rounds[0].served))]
        return [t / sum(totals) if sum(totals) else 0.0 for t in totals]

    def median(self, key: str) -> float:
        return statistics.median(getattr(r, key) for r in self.rounds)


def served(replica: LocalServer) -> float:
    """Chat streams this replica finished OK (its own /metrics)."""
    text = httpx.get(f"{replica.metrics_base}/metrics", timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "chatgen_requests_total" and s.labels == {"rpc": "StreamChatCompletion", "code": "OK"}
    )


@contextlib.contextmanager
def shared_gateway(model: str, replicas: list[LocalServer], balance: str) -> Iterator[int]:
    """`chatgen gateway --backends` over `replicas` with `balance`; yields its REST port once it routes."""
    work = Path(tempfile.mkdtemp(prefix=f"balancing-{balance}-"))
    backends = {"models": [{"name": model, "backends": [r.grpc_address for r in replicas], "balance": balance}]}
    (work / "backends.json").write_text(json.dumps(backends))
    http_port = free_port()
    command = [
        str(Path(sys.executable).with_name("chatgen")), "gateway", "--backends", str(work / "backends.json"),
        "--host", "127.0.0.1", "--http-port", str(http_port), "--envoy-admin-port", str(free_port()),
        "--envoy-stats-port", str(free_port()), "--work-dir", str(work), "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chatgen gateway exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{http_port}/v1/models/{model}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not route to the model")
            time.sleep(0.2)
        yield http_port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


async def one_round(
    client: RawHttp, replicas: list[LocalServer], workload: list[Request], args: argparse.Namespace
) -> Round:
    before = [served(r) for r in replicas]
    started = time.monotonic()
    results = await drive(client.chat, workload, args.clients, args.seconds)
    elapsed = time.monotonic() - started
    ttfts = [r.ttft * 1000 for r in results if r.ok]
    tokens = sum(r.output_tokens for r in results if r.ok)
    after = [served(r) for r in replicas]
    return Round(
        tokens / elapsed, pct(ttfts, 0.5), pct(ttfts, 0.99), sum(not r.ok for r in results),
        [b - a for a, b in zip(before, after, strict=True)],
    )  # fmt: skip


async def run(args: argparse.Namespace) -> list[Balance]:
    setup, workload = prepare(None, args)
    flags = (*simulator_flags(args.simulator, args.output_len), "--no-gateway")
    flags += ("--served-model-name", setup.served_name)
    balances = [Balance(b) for b in BALANCES]
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(local_server(*flags, "--max-running", str(c), "--max-waiting", "1024", metrics=True))
            for c in args.capacities
        ]
        ports = [stack.enter_context(shared_gateway(setup.served_name, replicas, b.name)) for b in balances]
        clients = [RawHttp("127.0.0.1", port, setup.served_name) for port in ports]
        for client in clients:
            # Warm: connections up, and the weighted balancer past its blackout with reports in hand.
            await drive(client.chat, workload, args.clients, args.warmup)
        with frozen_heap():
            for i in range(args.rounds):
                order = [0, 1] if i % 2 == 0 else [1, 0]
                for k in order:
                    balances[k].rounds.append(await one_round(clients[k], replicas, workload, args))
                line = ", ".join(
                    f"{b.name} {b.rounds[-1].tokens_per_s:.0f} tok/s, TTFT p99 {b.rounds[-1].ttft_p99_ms:.0f} ms"
                    for b in balances
                )
                print(f"round {i + 1}/{args.rounds}: {line}", flush=True)
    return balances


def report(balances: list[Balance], capacities: list[int]) -> None:
    shares = "  ".join(f"share @{c}" for c in capacities)
    print(f"\n{'balance':>14}{'tok/s':>8}{'TTFT p50':>10}{'p99':>8}{'errors':>8}  {shares}")
    for b in balances:
        cells = "  ".join(f"{s:>{len(f'share @{c}')}.3f}" for s, c in zip(b.shares(), capacities, strict=True))
        errors = sum(r.errors for r in b.rounds)
        print(
            f"{b.name:>14}{b.median('tokens_per_s'):>8.0f}{b.median('ttft_p50_ms'):>10.1f}"
            f"{b.median('ttft_p99_ms'):>8.1f}{errors:>8}  {cells}"
        )
    lr, weighted = balances
    for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms"):
        interval = paired_interval([getattr(r, key) for r in weighted.rounds], [getattr(r, key) for r in lr.rounds])
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "(too few rounds)"
        print(f"load_reports / least_request, {key}: 95 % interval {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacities", type=int, nargs="+", default=[2, 16, 16], help="each replica's --max-running")
    parser.add_argument("--clients", type=int, default=16, help="concurrent streams (closed loop)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per gateway and round")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--simulator", default="20,10", metavar="TTFT_MS,ITL_MS", help="the token simulator's timing")
    add_workload_arguments(parser)
    parser.set_defaults(output_len=16, input_len=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.concurrency = max(args.capacities)  # the engine settings' batch limit (unused by the simulator)
    balances = asyncio.run(run(args))
    report(balances, args.capacities)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(b) for b in balances], indent=2))


if __name__ == "__main__":
    main()
