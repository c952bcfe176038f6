"""The in-process baselines: vLLM's AsyncLLM itself (the ceiling) and transformers' own generate() (the hf
engine's baseline), each behind the same Send interface as the servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.clients import Result, Timer
from benchmarks.targets import EngineSetup, Send
from benchmarks.workload import Request, prompt_ids

Senders = dict[str, Send]


@contextlib.asynccontextmanager
async def engine_in_process(setup: EngineSetup) -> AsyncIterator[Senders]:
    """(e): vLLM's AsyncLLM in this process, the ceiling."""
    import os

    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from chatgen.engine.vllm_args import cpu_kv_cache_env, engine_args

    os.environ.update(cpu_kv_cache_env(dict(os.environ)))
    llm: Any = AsyncLLM.from_engine_args(engine_args(setup.defaults(), setup.engine_argv))
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    counter = 0

    async def send(request: Request) -> Result:
        nonlocal counter
        counter += 1
        ids = prompt_ids(tokenizer, request)
        params = SamplingParams(
            max_tokens=request.max_tokens, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
        )
        timer, tokens = Timer(), 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"bench-{counter}"):
            if out.outputs[0].text:
                timer.content()
            tokens += len(out.outputs[0].token_ids)
        return timer.done(tokens)

    try:
        yield {"engine": send}
    finally:
        llm.shutdown()
        # Drop the last reference now: AsyncLLM.__del__ shuts down again, which fails at interpreter exit.
        llm = None


@contextlib.asynccontextmanager
async def transformers_generate(setup: EngineSetup) -> AsyncIterator[Senders]:
    """(g), the hf engine's baseline: transformers' own generate() on the same prompts, in this process, with as
    many generations at once as the hf engine runs (its worker threads), greedy, exactly max_tokens each."""
    import concurrent.futures

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from chatgen.engine.hf_engine import HfSettings

    # The dtype the hf engine loads for --dtype (auto: float32).
    dtype = torch.float32 if setup.dtype == "auto" else getattr(torch, setup.dtype)
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir, dtype=dtype).eval()
    threads = HfSettings.max_concurrent
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="transformers-generate")

    class Stamps(BaseStreamer):  # type: ignore[misc]
        """When each new token came out of generate() (the first put() is the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if self.prompt_seen:
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def generate(ids: list[int], max_tokens: int, stamps: Stamps) -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                streamer=stamps,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        return int(out.shape[1] - len(ids))

    async def send(request: Request) -> Result:
        ids = prompt_ids(tokenizer, request)
        timer, stamps = Timer(), Stamps()
        tokens = await asyncio.get_running_loop().run_in_executor(pool, generate, ids, request.max_tokens, stamps)
        for at in stamps.times:
            timer.content(at)
        return timer.done(tokens)

    try:
        yield {"transformers": send}
    finally:
        pool.shutdown()
