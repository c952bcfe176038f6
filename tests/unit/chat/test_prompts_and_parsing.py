"""Chat templates (prompts.py) and the reasoning parser (parsing.py), on the Qwen3-style test model's tokenizer
(no engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.parsing import OutputParser, load_parser_class
from chatgen.chat.prompts import render_chat
from chatgen.chat.validation import ChatPlan, ServedModel, validate_chat
from chatgen.v1 import chatgen_pb2 as pb
from tests.support.models import THINKING_MODEL_NAME

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def plan(**fields: Any) -> ChatPlan:
    request = json_format.ParseDict(
        {"model": THINKING_MODEL_NAME, "messages": QUESTION, **fields}, pb.CreateChatCompletionRequest()
    )
    return validate_chat(request, ServedModel(THINKING_MODEL_NAME, "hf"), streaming=False)


@pytest.fixture(scope="module")
def tokenizer(thinking_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(thinking_model_dir)


def prompt(tokenizer, **fields) -> str:  # type: ignore[no-untyped-def]
    return str(tokenizer.decode(render_chat(tokenizer, plan(**fields))))


def test_rendered_prompt_branches_on_enable_thinking(tokenizer) -> None:  # type: ignore[no-untyped-def]
    on = prompt(tokenizer)
    off = prompt(tokenizer, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"
    assert prompt(tokenizer, enable_thinking=True) == on
    assert prompt(tokenizer, chat_template_kwargs={"enable_thinking": False}) == off
    assert prompt(tokenizer, enable_thinking=True, chat_template_kwargs={"enable_thinking": False}) == off


def test_parser_splits_a_delta_that_holds_the_closing_tag_and_answer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    parser_cls = load_parser_class("qwen3", None, tokenizer)
    assert parser_cls is not None
    request = plan()
    prompt_ids = render_chat(tokenizer, request)
    parser = OutputParser(parser_cls, tokenizer, request, prompt_ids)
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
    final = OutputParser(parser_cls, tokenizer, request, prompt_ids).final(
        whole, tokenizer.encode(whole, add_special_tokens=False)
    )
    assert (final.reasoning, final.content) == (reasoning, content)


def test_no_parser_configured_means_none() -> None:
    assert load_parser_class(None, None, object()) is None
