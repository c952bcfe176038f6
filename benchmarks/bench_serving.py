"""Serving overhead benchmark: the engine alone vs chatgen over gRPC vs chatgen over REST (Envoy), one run.

    .venv/bin/python -m benchmarks.bench_serving              # embedded model, concurrency 1 and 8
    .venv/bin/python -m benchmarks.bench_serving --concurrency 1 8 32 --requests 32 --json out.json

(a) vLLM `AsyncLLM` in this process (no serving layer: the ceiling), (b) `chatgen serve` over gRPC streaming,
(c) the same server over REST/SSE through Envoy. Every request streams a chat completion of exactly
--max-tokens tokens (ignore_eos) for a prompt drawn from a seeded list, so all three do the same work. Reported:
output tokens/s and time-to-first-token (first content token) p50/p99 per concurrency, and the ratios b/a and
c/b measured side by side in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.local_server import local_server, pct

TOPICS = ["the ocean", "a city at night", "mountains", "a robot", "coffee", "the moon", "trains", "a library"]
STYLES = ["Write a short story about", "Describe", "Explain to a child", "Write a poem about"]


@dataclass
class Sample:
    ttft: float
    tokens: int


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(STYLES)} {rng.choice(TOPICS)}." for _ in range(n)]


async def run_level(mode: str, concurrency: int, texts: list[str], one: Callable[[str], Awaitable[Sample]]) -> Level:
    queue = list(texts)
    samples: list[Sample] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while queue:
            text = queue.pop()
            try:
                samples.append(await one(text))
            except Exception as exc:
                errors += 1
                print(f"  {mode}: request failed: {exc}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ttfts = [s.ttft * 1000 for s in samples] or [float("nan")]
    return Level(
        mode,
        concurrency,
        len(samples),
        sum(s.tokens for s in samples) / wall,
        pct(ttfts, 0.5),
        pct(ttfts, 0.99),
        errors,
    )


# ---- (a) the engine in-process -------------------------------------------------------------------------------


async def bench_engine(model_dir: str, args: argparse.Namespace, texts: list[str]) -> list[Level]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from chatgen.engine.vllm_engine import cpu_only

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    dtype = "float32" if cpu_only() else "auto"
    llm = AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=model_dir, max_model_len=2048, dtype=dtype, enforce_eager=True, seed=0)
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )
    counter = 0

    async def one(text: str) -> Sample:
        nonlocal counter
        counter += 1
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        ids = tok.encode(rendered, add_special_tokens=False)
        start = time.perf_counter()
        ttft, tokens = 0.0, 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"bench-{counter}"):
            c = out.outputs[0]
            if c.text and not ttft:
                ttft = time.perf_counter() - start
            tokens += len(c.token_ids)
        return Sample(ttft, tokens)

    try:
        await one("warm up")
        return [await run_level("engine", c, texts, one) for c in args.concurrency]
    finally:
        llm.shutdown()
        # Drop the last reference now: AsyncLLM.__del__ shuts down again, which fails at interpreter exit.
        llm = None


# ---- (b) gRPC and (c) REST against `chatgen serve` ---------------------------------------------------------------


async def bench_grpc(address: str, model: str, args: argparse.Namespace, texts: list[str]) -> list[Level]:
    import grpc
    from google.protobuf import struct_pb2

    from chatgen.v1 import chatgen_pb2 as pb
    from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ChatStub(channel)

        async def one(text: str) -> Sample:
            req = pb.ChatCompletionRequest(
                model=model,
                messages=[pb.ChatMessage(role="user", content=struct_pb2.Value(string_value=text))],
                max_tokens=args.max_tokens,
                temperature=0,
                ignore_eos=True,
                stream_options=pb.StreamOptions(include_usage=True),
            )
            start = time.perf_counter()
            ttft, tokens = 0.0, 0
            async for chunk in stub.StreamChatCompletion(req):
                if not ttft and chunk.choices and chunk.choices[0].delta.content:
                    ttft = time.perf_counter() - start
                if chunk.HasField("usage"):
                    tokens = chunk.usage.completion_tokens
            return Sample(ttft, tokens)

        await one("warm up")
        return [await run_level("grpc", c, texts, one) for c in args.concurrency]


async def bench_rest(base: str, model: str, args: argparse.Namespace, texts: list[str]) -> list[Level]:
    import httpx

    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:

        async def one(text: str) -> Sample:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            start = time.perf_counter()
            ttft, tokens = 0.0, 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if not ttft and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            return Sample(ttft, tokens)

        await one("warm up")
        return [await run_level("rest", c, texts, one) for c in args.concurrency]


def report(levels: list[Level]) -> dict[str, float]:
    by = {(lv.mode, lv.concurrency): lv for lv in levels}
    print(f"\n{'mode':<8}{'conc':>6}{'reqs':>6}{'tok/s':>10}{'TTFT p50 ms':>14}{'TTFT p99 ms':>14}{'errors':>8}")
    for lv in levels:
        print(
            f"{lv.mode:<8}{lv.concurrency:>6}{lv.requests:>6}{lv.tokens_per_s:>10.1f}"
            f"{lv.ttft_p50_ms:>14.1f}{lv.ttft_p99_ms:>14.1f}{lv.errors:>8}"
        )
    ratios: dict[str, float] = {}
    print(f"\n{'conc':>6}{'tok/s b/a (grpc/engine)':>26}{'tok/s c/b (rest/grpc)':>24}{'TTFT p50 c-b ms':>18}")
    for c in sorted({lv.concurrency for lv in levels}):
        a, b, r = by.get(("engine", c)), by.get(("grpc", c)), by.get(("rest", c))
        ba = b.tokens_per_s / a.tokens_per_s if a and b else float("nan")
        cb = r.tokens_per_s / b.tokens_per_s if r and b else float("nan")
        dt = r.ttft_p50_ms - b.ttft_p50_ms if r and b else float("nan")
        ratios[f"b/a@{c}"], ratios[f"c/b@{c}"] = ba, cb
        print(f"{c:>6}{ba:>26.3f}{cb:>24.3f}{dt:>18.1f}")
    return ratios


async def main_async(args: argparse.Namespace) -> None:
    from chatgen.engine.factory import resolve_model

    choice = resolve_model(args.model, None)
    texts = prompts(args.requests, args.seed)
    levels: list[Level] = []
    if not args.skip_engine:
        print("(a) vLLM in-process ...", file=sys.stderr, flush=True)
        levels += await bench_engine(choice.path, args, texts)
    print("(b, c) starting chatgen serve ...", file=sys.stderr, flush=True)
    with local_server(*(["--model", args.model] if args.model else [])) as server:
        print("(b) gRPC ...", file=sys.stderr, flush=True)
        levels += await bench_grpc(server.grpc_address, choice.served_name, args, texts)
        print("(c) REST via Envoy ...", file=sys.stderr, flush=True)
        levels += await bench_rest(server.http_base, choice.served_name, args, texts)
    ratios = report(levels)
    if args.json:
        Path(args.json).write_text(json.dumps({"levels": [asdict(lv) for lv in levels], "ratios": ratios}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model dir (default: the embedded SmolLM2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-engine", action="store_true", help="skip (a), e.g. where memory is short")
    parser.add_argument("--json", default=None, help="also write the results here")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
