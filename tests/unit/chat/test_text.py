"""chat.validation.text: the rules every string of a request follows (no NUL, bounded identifiers), and error
messages that quote a client's value only in part."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation import ServedModel, validate_chat, validate_completion
from chatgen.errors import ApiError, Failure
from chatgen.v1 import chatgen_pb2 as pb

MODEL = ServedModel("m", "vllm", tool_parser=True)


def chat(**fields: Any) -> pb.CreateChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json_format.ParseDict(body, pb.CreateChatCompletionRequest())


def tool(name: str = "now", **parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", **parameters}}}


CHAT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\x00"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": "x", "name": "n" * 65}]}, "messages[0].name"),
    ({"stop": ["ok", "\x00"]}, "stop[1]"),
    ({"tools": [tool("n" * 65)]}, "tools[0].function.name"),
    (
        {"tools": [tool(properties={"x": {"type": "string", "description": "\x00"}})]},
        "tools[0].function.parameters.properties.x.description",
    ),
    ({"tools": [tool(properties={"\x00": {"type": "string"}})]}, "tools[0].function.parameters.properties"),
    ({"chat_template_kwargs": {"\x00": 1}}, "chat_template_kwargs"),
    ({"user": "u" * 257}, "user"),
    ({"request_id": "r" * 129}, "request_id"),
    ({"request_id": "two\nlines"}, "request_id"),
    ({"request_id": "caf\u00e9"}, "request_id"),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "i" * 257, "function": {"name": "f"}}]}]},
        "messages[0].tool_calls[0].id",
    ),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "\x00"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "param"), CHAT_CASES, ids=[json.dumps(f)[:50] for f, _ in CHAT_CASES])
def test_a_chat_string_that_breaks_a_rule_is_400_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_chat(chat(**fields), MODEL, streaming=False)
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, param), info.value.message
    assert len(info.value.message) < 200


@pytest.mark.parametrize(("prompt", "param"), [("a\x00", "prompt"), (["a\x00"], "prompt[0]")])
def test_a_completion_prompt_with_nul_is_400(prompt: Any, param: str) -> None:
    request = json_format.ParseDict({"model": "m", "prompt": prompt}, pb.CreateCompletionRequest())
    with pytest.raises(ApiError) as info:
        validate_completion(request, MODEL, streaming=False)
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, param)


def test_other_control_characters_are_text() -> None:
    plan = validate_chat(chat(messages=[{"role": "user", "content": "tab\tbell\x07\x1b[0m"}]), MODEL, streaming=False)
    assert plan.messages[0].content == "tab\tbell\x07\x1b[0m"


def test_identifiers_at_their_limits_pass() -> None:
    fields = {"user": "u" * 256, "request_id": "r" * 128, "tools": [tool("n" * 64)]}
    plan = validate_chat(chat(**fields), MODEL, streaming=False)
    assert plan.request_id == "r" * 128 and plan.tools[0]["function"]["name"] == "n" * 64


def test_an_unknown_model_is_quoted_in_part() -> None:
    """2,000 emoji as a model name: still a 404, whose message quotes 64 of them."""
    with pytest.raises(ApiError) as info:
        validate_chat(chat(model="\U0001f600" * 200), MODEL, streaming=False)
    assert info.value.failure is Failure.MODEL_NOT_FOUND
    assert info.value.message.count("\U0001f600") == 64 and "..." in info.value.message
