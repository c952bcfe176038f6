"""The scripted test models the suites share (built once, cached under ~/.cache/chatgen/test-models)."""

from __future__ import annotations

from pathlib import Path

from tests.support.scripted_model import HERMES_STYLE_TEMPLATE, QWEN3_STYLE_TEMPLATE, build_scripted_model

THINKING_MODEL_NAME = "qwen3-style-tiny"
REASONING = " the user asks about France"
ANSWER = "The capital is Paris."

_ANSWER_TOKENS = ["The", " capital", " is", " Paris", ".", "<|im_end|>"]


def thinking_model(base_tokenizer_dir: Path) -> Path:
    """Qwen3-style: thinks in <think>...</think> then answers; with enable_thinking=false the template closes the
    think block in the prompt (ending in "\\n\\n") and the model answers straight away."""
    return build_scripted_model(
        THINKING_MODEL_NAME,
        base_tokenizer_dir,
        QWEN3_STYLE_TEMPLATE,
        added_tokens=["<think>", "</think>"],
        scripts=[
            ["\n", "<think>", " the", " user", " asks", " about", " France", "</think>", *_ANSWER_TOKENS],
            ["\n\n", *_ANSWER_TOKENS],
        ],
    )


TOOLS_MODEL_NAME = "hermes-style-tiny"
TOOL_CALL_JSON = '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'


def tools_model(base_tokenizer_dir: Path) -> Path:
    """Hermes-format tool caller: whatever it is asked, it answers with one get_weather(city="Paris") call."""
    return build_scripted_model(
        TOOLS_MODEL_NAME,
        base_tokenizer_dir,
        HERMES_STYLE_TEMPLATE,
        # The call's JSON is one added token so the bigram script can emit it in one step.
        added_tokens=["<tool_call>", "</tool_call>", TOOL_CALL_JSON],
        scripts=[["\n", "<tool_call>", TOOL_CALL_JSON, "</tool_call>", "<|im_end|>"]],
    )


BASE_MODEL_NAME = "base-tiny"


def base_model(base_tokenizer_dir: Path) -> Path:
    """A base (pretrained-only) model: no chat template, so it can generate but not chat."""
    return build_scripted_model(
        BASE_MODEL_NAME,
        base_tokenizer_dir,
        None,
        added_tokens=[],
        scripts=[[" France", " is", " Paris", ".", "<|im_end|>"]],
    )
