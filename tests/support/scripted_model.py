"""Tiny test models whose greedy output is a known script: real weights, real engines, assertable output.

A one-layer Llama whose attention and MLP write nothing (o_proj and down_proj are zero), so the hidden state at
the last position is just the embedding of the last token: the model is a bigram model. `lm_head` is built so
that each scripted token's successor wins by a wide margin. At temperature 0 the model therefore continues a
prompt that ends in a scripted token exactly as scripted, on vLLM and on transformers alike.

Tokenizer and chat template: the embedded SmolLM2 tokenizer plus the extra tokens a feature needs (e.g. Qwen3's
`<think>`/`</think>`), with the chat template of the model family being imitated.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

from chatgen.embedded_model import save_model_dir

CACHE_ROOT = Path(os.environ.get("CHATGEN_TEST_MODEL_CACHE", Path.home() / ".cache" / "chatgen" / "test-models"))

# Qwen3's chat template, reduced to what the tests exercise: ChatML turns, an assistant turn's reasoning_content
# shown again in its think block, and with enable_thinking=false an empty think block appended to the generation
# prompt (as Qwen3 does).
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'assistant' and message.reasoning_content %}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


# Hermes tool-calling format as Qwen2.5 templates render it: tools listed in the system turn inside <tools>,
# calls as <tool_call>{json}</tool_call>, results fed back as <tool_response> in a user turn.
HERMES_STYLE_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou may call these functions:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- for call in message.tool_calls %}"
    '{{- \'<tool_call>\\n{"name": "\' + call.function.name + \'", "arguments": \' }}'
    "{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_scripted_model(
    name: str,
    base_tokenizer_dir: Path,
    chat_template: str | None,
    added_tokens: Sequence[str],
    scripts: Sequence[Sequence[str]],
) -> Path:
    """Build (or reuse from the cache) a model directory; each script is a token-string chain it will follow."""
    key = hashlib.sha256(
        json.dumps([name, chat_template, list(added_tokens), [list(s) for s in scripts], 1]).encode()
    ).hexdigest()[:12]
    target = CACHE_ROOT / f"{name}-{key}"
    if (target / ".complete").exists():
        return target

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tokenizer.add_tokens(list(added_tokens))
    tokenizer.chat_template = chat_template  # None: a base model, with no chat template at all

    def token_id(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"script token {text!r} is {len(ids)} tokens, it must be exactly one")
        return int(ids[0])

    successor: dict[int, int] = {}
    for script in scripts:
        ids = [token_id(t) for t in script]
        for a, b in itertools.pairwise(ids):
            if successor.setdefault(a, b) != b:
                raise ValueError(f"token {tokenizer.decode([a])!r} has two different successors in the scripts")

    hidden = 64
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=hidden,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        embed = torch.randn(config.vocab_size, hidden, generator=generator)
        model.model.embed_tokens.weight.copy_(embed)
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        head = torch.randn(config.vocab_size, hidden, generator=generator) * 0.01
        for a, b in successor.items():
            head[b] += 10.0 * embed[a] / embed[a].norm()
        model.lm_head.weight.copy_(head)
    save_model_dir(target, model, tokenizer)
    return target
