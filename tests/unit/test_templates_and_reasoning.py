"""Template variables and the reasoning parser, on the Qwen3-style test model's tokenizer (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatgen.chat.parsing import OutputParser, load_parser_class
from chatgen.chat.prompts import render_chat, template_variables
from chatgen.chat.types import ChatRequest, Message
from chatgen.errors import ChatgenError
from tests.support.models import THINKING_MODEL_NAME

QUESTION = [Message("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def tokenizer(thinking_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(thinking_model_dir)


def prompt(tokenizer, **fields) -> str:  # type: ignore[no-untyped-def]
    request = ChatRequest(THINKING_MODEL_NAME, QUESTION, **fields)
    return str(tokenizer.decode(render_chat(tokenizer, request.messages, template_variables(request))))


def test_enable_thinking_sets_both_template_variables() -> None:
    assert template_variables(ChatRequest("m", QUESTION, enable_thinking=False)) == {
        "enable_thinking": False,
        "thinking": False,
    }
    assert template_variables(ChatRequest("m", QUESTION)) == {}
    explicit = ChatRequest("m", QUESTION, template_kwargs={"thinking": True, "x": 1}, enable_thinking=False)
    assert template_variables(explicit) == {"thinking": True, "x": 1, "enable_thinking": False}


def test_rendered_prompt_branches_on_enable_thinking(tokenizer) -> None:  # type: ignore[no-untyped-def]
    on = prompt(tokenizer)
    off = prompt(tokenizer, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"
    assert prompt(tokenizer, enable_thinking=True) == on
    assert prompt(tokenizer, template_kwargs={"enable_thinking": False}) == off
    assert prompt(tokenizer, enable_thinking=True, template_kwargs={"enable_thinking": False}) == off


def test_reserved_template_kwargs_are_rejected() -> None:
    with pytest.raises(ChatgenError) as info:
        template_variables(ChatRequest("m", QUESTION, template_kwargs={"add_generation_prompt": False}))
    assert info.value.param == "chat_template_kwargs.add_generation_prompt"


def test_parser_splits_a_delta_that_holds_the_closing_tag_and_answer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    parser_cls = load_parser_class("qwen3", None, tokenizer)
    assert parser_cls is not None
    request = ChatRequest(THINKING_MODEL_NAME, QUESTION)
    prompt_ids = render_chat(tokenizer, QUESTION, {})
    parser = OutputParser(parser_cls, tokenizer, request, {}, prompt_ids)
    pieces = ["<think>", " the user", " asks about France</think>The", " capital is Paris."]
    reasoning, content = "", ""
    for i, piece in enumerate(pieces):
        ids = tokenizer.encode(piece, add_special_tokens=False)
        out = parser.delta(piece, ids, finished=i == len(pieces) - 1)
        reasoning += out.reasoning
        content += out.content
    assert reasoning == " the user asks about France"
    assert content == "The capital is Paris."
    whole = "".join(pieces)
    final = OutputParser(parser_cls, tokenizer, request, {}, prompt_ids).final(
        whole, tokenizer.encode(whole, add_special_tokens=False)
    )
    assert (final.reasoning, final.content) == (reasoning, content)


def test_no_parser_configured_means_none() -> None:
    assert load_parser_class(None, None, object()) is None
