"""Where the serving layer's time goes per token: a sampling profile of `chatgen serve` under streaming load.

    .venv/bin/python -m benchmarks.profile_serving                     # 20 s per protocol, 8 clients, SmolLM2
    .venv/bin/python -m benchmarks.profile_serving --seconds 60 --concurrency 32 --compare-vllm --json prof.json
    .venv/bin/python -m benchmarks.profile_serving --model tiny --concurrency 32 --compare-vllm   # serving-bound

It starts `chatgen serve` (the vLLM engine, as the benchmark runs it; or the token simulator with --simulator, where
the serving stack itself is the bottleneck), streams chat completions from N clients,
first over gRPC and then over REST through Envoy, and meanwhile samples the server's Python stacks with py-spy
(out of process: the server runs unmodified). Reported per protocol:

- CPU per output token (µs) of the serving process (transport, chat layer and vLLM's AsyncLLM front end —
  detokenizing, output processing — but not vLLM's engine-core child that runs the model) and of Envoy;
  with --compare-vllm the same figure for `vllm serve`'s API process under the same load, the baseline;
- where the serving process's active samples are, by the package of the innermost Python frame (chatgen,
  vllm, grpc, protobuf, asyncio, ...), and the chatgen functions that are on the stack most often (inclusive).

py-spy needs permission to read another process's memory (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.clients import Result, frozen_heap
from benchmarks.targets import (
    EngineSetup,
    Send,
    add_http_client_argument,
    chatgen_senders,
    openai_sender,
    vllm_serve,
)
from benchmarks.tiny_model import MODEL_HELP, bench_model
from benchmarks.workload import Request, synthetic

# Innermost-frame file prefixes (py-spy shortens paths to the package part) -> the layer they belong to.
LAYERS = (
    ("chatgen/", "chatgen"),
    ("vllm/", "vllm front end"),
    ("grpc/", "grpc"),
    ("google/protobuf/", "protobuf"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("transformers/", "tokenizer"),
    ("tokenizers/", "tokenizer"),
    ("httpx/", "httpx"),
    ("uvicorn/", "http server"),
    ("starlette/", "http server"),
    ("fastapi/", "http server"),
    ("pydantic", "pydantic"),
)


ENTRY = ("<module> (chatgen/__main__.py)", "main (chatgen/cli.py)", "serve (chatgen/cli.py)")


@dataclass
class Profile:
    server: str
    protocol: str
    seconds: float
    requests: int
    output_tokens: int
    errors: int
    server_cpu_s: float
    envoy_cpu_s: float = 0.0
    server_us_per_token: float = 0.0
    envoy_us_per_token: float = 0.0
    # Output tokens per content chunk: above 1 when vLLM merged a stream's tokens (its consumer was behind), which
    # spreads the per-chunk costs (a gRPC write, an SSE event) over several tokens.
    tokens_per_chunk: float = 0.0
    samples: int = 0
    layers: dict[str, float] = field(default_factory=dict)
    self_time: dict[str, float] = field(default_factory=dict)
    chatgen_functions: dict[str, float] = field(default_factory=dict)


def layer_of(frame: str) -> str:
    location = frame[frame.rfind("(") + 1 :].rstrip(")")
    for prefix, layer in LAYERS:
        if location.startswith(prefix) or f"/{prefix}" in location:
            return layer
    return "other"


@dataclass
class Samples:
    total: int = 0
    # by the layer of the innermost frame; by innermost frame (self time); chatgen frames anywhere (inclusive)
    layers: collections.Counter[str] = field(default_factory=collections.Counter)
    innermost: collections.Counter[str] = field(default_factory=collections.Counter)
    chatgen: collections.Counter[str] = field(default_factory=collections.Counter)


def read_raw(path: Path) -> Samples:
    """py-spy's raw (collapsed) stacks: `frame;frame;...;innermost count` per line, outermost first."""
    samples = Samples()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples.total += count
        samples.layers[layer_of(frames[-1])] += count
        samples.innermost[frames[-1]] += count
        # Every stack starts in chatgen's entry point; what's below it is the interesting part.
        for name in {f for f in frames if "chatgen/" in f and not f.startswith(ENTRY)}:
            samples.chatgen[name] += count
    return samples


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return float(t.user + t.system)


async def drive(send: Send, workload: list[Request], clients: int, seconds: float):
    """`clients` loops of streamed requests until `seconds` have passed (each finishes the one it started)."""
    results: list[Result] = []
    deadline = time.monotonic() + seconds
    counter = 0

    async def client() -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            counter += 1
            results.append(await send(workload[counter % len(workload)]))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


async def measure(
    server: str,
    protocol: str,
    send: Send,
    workload: list[Request],
    args: argparse.Namespace,
    main: psutil.Process,
    envoy: psutil.Process | None,
) -> Profile:
    raw = Path(tempfile.mkstemp(prefix=f"pyspy-{server}-{protocol}-", suffix=".txt")[1])
    spy = None
    if args.sample:
        cmd = [
            _py_spy(), "record", "--pid", str(main.pid), "--format", "raw", "--output", str(raw),
            "--rate", str(args.rate), "--nolineno", "--nonblocking", "--duration", str(int(args.seconds)),
        ]  # fmt: skip
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before, envoy_before, started = cpu_seconds(main), cpu_seconds(envoy), time.monotonic()
    results = await drive(send, workload, args.concurrency, args.seconds)
    seconds = time.monotonic() - started
    server_cpu, envoy_cpu = cpu_seconds(main) - before, cpu_seconds(envoy) - envoy_before
    tokens = sum(r.output_tokens for r in results if r.ok)
    # A stream's first content chunk starts its clock, each later one adds an inter-token gap.
    chunks = sum(len(r.itls) + 1 for r in results if r.ok and r.output_tokens)
    profile = Profile(
        server,
        protocol,
        seconds,
        len(results),
        tokens,
        sum(not r.ok for r in results),
        server_cpu,
        envoy_cpu,
        server_cpu / tokens * 1e6 if tokens else 0.0,
        envoy_cpu / tokens * 1e6 if tokens else 0.0,
        tokens / chunks if chunks else 0.0,
    )
    if spy is not None:
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {err[-2000:]}")
        samples = read_raw(raw)
        if samples.total:
            profile.samples = samples.total
            profile.layers = {k: v / samples.total for k, v in samples.layers.most_common()}
            profile.self_time = {k: v / samples.total for k, v in samples.innermost.most_common(args.top)}
            profile.chatgen_functions = {k: v / samples.total for k, v in samples.chatgen.most_common(args.top)}
    raw.unlink(missing_ok=True)
    return profile


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed (pip install py-spy), or run with --no-sample")
    return found


def envoy_child(pid: int) -> psutil.Process | None:
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "envoy" in child.name():
                return child
    return None


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic workload's shape (see `prepare`); benchmarks.envoy_workers takes the same."""
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)


def prepare(model: str | None, args: argparse.Namespace) -> tuple[EngineSetup, list[Request]]:
    """The served model's engine settings and 256 seeded requests in its tokens, from `add_workload_arguments`'
    arguments and --concurrency."""
    from transformers import AutoTokenizer

    choice = bench_model(model)
    setup = EngineSetup(choice.path, choice.served_name, args.max_model_len, args.concurrency)
    tokenizer = AutoTokenizer.from_pretrained(choice.path)
    return setup, synthetic(256, args.seed, tokenizer, args.input_len, args.output_len, args.max_model_len)


def simulator_flags(timing: str, output_len: int) -> tuple[str, ...]:
    """`chatgen serve` flags for the token simulator: TTFT_MS,ITL_MS and the workload's output length."""
    return ("--engine", "simulator", "--simulator-timing", f"{timing},{output_len}")


async def run(args: argparse.Namespace) -> list[Profile]:
    setup, workload = prepare(args.model, args)
    profiles = []
    flags = simulator_flags(args.simulator, args.output_len) if args.simulator else ()
    async with chatgen_senders(setup, args.concurrency + 8, *flags, http_client=args.http_client) as send:
        main, envoy = psutil.Process(send.server.pid), envoy_child(send.server.pid)
        for request in workload[:2]:
            await send.grpc(request)
        with frozen_heap():
            profiles.append(await measure("chatgen", "grpc", send.grpc, workload, args, main, None))
            profiles.append(await measure("chatgen", "rest", send.rest, workload, args, main, envoy))
    if args.compare_vllm and not args.simulator:
        with vllm_serve(setup) as served:
            connections = args.concurrency + 8
            async with openai_sender(served.base, setup.served_name, connections, args.http_client) as send_vllm:
                for request in workload[:2]:
                    await send_vllm(request)
                api = psutil.Process(served.pid)
                with frozen_heap():
                    profiles.append(await measure("vllm serve", "rest", send_vllm, workload, args, api, None))
    return profiles


def report(profiles: list[Profile]) -> None:
    head = f"{'server':<12}{'protocol':<10}{'tokens':>8}{'tok/s':>8}{'errors':>8}{'server µs/tok':>15}"
    print(f"\n{head}{'envoy µs/tok':>14}{'tok/chunk':>11}")
    for p in profiles:
        print(
            f"{p.server:<12}{p.protocol:<10}{p.output_tokens:>8}{p.output_tokens / p.seconds:>8.1f}{p.errors:>8}"
            f"{p.server_us_per_token:>15.0f}{p.envoy_us_per_token:>14.0f}{p.tokens_per_chunk:>11.2f}"
        )
    for p in profiles:
        if not p.samples:
            continue
        print(f"\n{p.server} {p.protocol}: {p.samples} active samples of the serving process, by innermost frame")
        for layer, share in p.layers.items():
            print(f"  {layer:<20}{share:>7.1%}")
        print("  innermost frames (self time):")
        for name, share in p.self_time.items():
            print(f"    {share:>6.1%}  {name}")
        if p.chatgen_functions:
            print("  chatgen functions on the stack (inclusive):")
            for name, share in p.chatgen_functions.items():
                print(f"    {share:>6.1%}  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--seconds", type=float, default=20.0, help="load (and sampling) time per protocol")
    parser.add_argument("--concurrency", type=int, default=8)
    add_workload_arguments(parser)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12, help="chatgen functions to list")
    parser.add_argument("--no-sample", dest="sample", action="store_false", help="CPU per token only, no py-spy")
    parser.add_argument("--compare-vllm", action="store_true", help="also measure `vllm serve`'s API process")
    parser.add_argument(
        "--simulator",
        default=None,
        metavar="TTFT_MS,ITL_MS",
        help="serve from the token simulator instead of vLLM, so that the serving stack is the bottleneck",
    )
    add_http_client_argument(parser)  # for chatgen through Envoy and `vllm serve`
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    profiles = asyncio.run(run(args))
    report(profiles)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in profiles], indent=2))


if __name__ == "__main__":
    main()
