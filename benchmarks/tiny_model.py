"""A serving-bound model for the benchmark: the embedded model's tokenizer and chat template on one random layer.

On this CPU the 135M model takes ≈ 40 ms a decode step, so every server in the benchmark waits on the same engine
and the serving layer's cost (≈ 0.5 ms of CPU per token) hides inside the noise. On a GPU the step is a few ms and
the API process is what runs out first. A one-layer, 64-wide model with the same 49k vocabulary makes the engine's
step nearly free here as well, so the same harness measures the serving layers themselves: requests still go
through the real tokenizer, chat template, vLLM scheduler and detokenizer, and every target streams exactly its
max_tokens (ignore_eos), so the random weights only choose which tokens.
"""

from __future__ import annotations

from pathlib import Path

from chatgen.embedded_model import default_cache_dir, embedded_model_dir, save_model_dir
from chatgen.engine.factory import ModelChoice, resolve_model

TINY_MODEL = "tiny"
MODEL_HELP = (
    "HF model dir (default: the embedded SmolLM2); tiny: a random one-layer model with its tokenizer, so that the "
    "engine's step is nearly free and the serving layers are what is measured"
)
_VERSION = "1"
_WIDTH = 64


def tiny_model_dir(base: Path, cache_dir: Path) -> Path:
    """Build once (seeded, ≈ 13 MB) from `base`'s tokenizer and config, or reuse the cached directory."""
    target = cache_dir / f"bench-tiny-v{_VERSION}"
    if (target / ".complete").exists():
        return target

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = 1
    config.hidden_size = _WIDTH
    config.intermediate_size = 2 * _WIDTH
    config.num_attention_heads = 1
    config.num_key_value_heads = 1
    config.head_dim = _WIDTH
    config.tie_word_embeddings = True
    config.dtype = torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    save_model_dir(target, model, tokenizer)
    return target


def bench_model(model: str | None) -> ModelChoice:
    """The benchmark's --model: `tiny` for the serving-bound model, else as `chatgen serve --model` takes it."""
    if model == TINY_MODEL:
        return resolve_model(str(tiny_model_dir(embedded_model_dir(), default_cache_dir())), TINY_MODEL)
    return resolve_model(model, None)
