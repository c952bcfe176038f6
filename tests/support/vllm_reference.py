"""What vLLM's AsyncLLM generates greedily for one token-id prompt, on the base model and with LoRA adapters:
stdin {"model", "adapters": {name: path}, "prompt_ids", "max_tokens"} -> stdout {name or "": text}.

The engine arguments are the ones `chatgen serve` builds for the same flags (chatgen.engine.vllm_args), so the two
engines differ only in what serves them."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tests.support.lora import LORA_FLAGS, MAX_MODEL_LEN


async def generate(request: dict[str, Any]) -> dict[str, str]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from chatgen.engine.vllm_args import EngineDefaults, engine_args

    defaults = EngineDefaults(request["model"], "reference", MAX_MODEL_LEN, "auto", None, on_cpu=True)
    llm = AsyncLLM.from_engine_args(engine_args(defaults, LORA_FLAGS))
    params = SamplingParams(max_tokens=request["max_tokens"], temperature=0)
    runs: dict[str, Any] = {"": None}
    for i, (name, path) in enumerate(request["adapters"].items(), start=1):
        runs[name] = LoRARequest(name, i, path)
    out: dict[str, str] = {}
    try:
        for name, lora in runs.items():
            text = ""
            prompt = TokensPrompt(prompt_token_ids=request["prompt_ids"])
            async for step in llm.generate(prompt, params, f"reference-{name}", lora_request=lora):
                text = step.outputs[0].text
            out[name] = text
    finally:
        llm.shutdown()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(generate(json.loads(sys.stdin.read())))))
