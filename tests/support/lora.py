"""LoRA adapters the tests build over the embedded model with peft, and what vLLM's own engine generates with them.

An adapter here is PEFT's format (adapter_config.json + adapter_model.safetensors) with random, non-zero A and B
matrices (init_lora_weights=False; PEFT's default B = 0 would leave the model unchanged), so its greedy output
differs from the base model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# The server under test and the reference engine both run with these adapter slots.
LORA_FLAGS = ("--enable-lora", "--max-loras", "2", "--max-lora-rank", "16")
MAX_MODEL_LEN = 1024


def build_adapter(base_model: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A rank-`rank` LoRA adapter on the attention projections of `base_model`, its weights drawn with `seed`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def with_config(adapter: Path, out: Path, **changes: object) -> Path:
    """A copy of `adapter` whose adapter_config.json has `changes` applied (an adapter vLLM must refuse)."""
    out.mkdir(parents=True)
    for item in adapter.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return out


def vllm_reference(
    base_model: Path, adapters: dict[str, Path], prompt_ids: list[int], max_tokens: int
) -> dict[str, str]:
    """Greedy text for `prompt_ids` from vLLM's AsyncLLM itself (no chatgen serving in between), for the base model
    ("" key) and each adapter, with the engine arguments `chatgen serve` gives vLLM. In a process of its own: vLLM
    spawns its engine core, and the test process must not hold a second engine."""
    request = {
        "model": str(base_model),
        "adapters": {name: str(path) for name, path in adapters.items()},
        "prompt_ids": prompt_ids,
        "max_tokens": max_tokens,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.vllm_reference"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
