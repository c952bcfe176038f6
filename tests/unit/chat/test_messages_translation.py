"""chat.validation.messages: Anthropic Messages requests -> the chat requests they stand for, and their errors named
by the Messages request's fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation.messages import translate, translate_count
from chatgen.errors import ApiError, Failure, invalid
from chatgen.v1 import chatgen_pb2 as pb


def request(**fields: Any) -> pb.CreateMessageRequest:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json_format.ParseDict(body, pb.CreateMessageRequest())


def chat_of(message: pb.CreateMessageRequest, streaming: bool = False) -> dict[str, Any]:
    return json_format.MessageToDict(translate(message, streaming).chat, preserving_proto_field_name=True)


def test_a_tool_conversation_becomes_chat_messages() -> None:
    message = request(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should look it up", "signature": ""},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
        metadata={"user_id": "u1"},
    )
    translation = translate(message, streaming=False)
    chat = json_format.MessageToDict(translation.chat, preserving_proto_field_name=True)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert chat["messages"][0]["content"] == "Be brief.\nBe kind."
    assistant = chat["messages"][2]
    # Earlier thinking is not shown to the model again.
    assert assistant["content"] == "Let me check."
    (call,) = assistant["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call_1", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}  # ints stay ints
    assert chat["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert translation.origins == ("system", "messages[0]", "messages[1]", "messages[2]", "messages[2]")
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
        }
    ]
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)
    assert (chat["stop"], chat["temperature"], chat["top_k"], chat["user"]) == (["END"], 0.5, 5, "u1")
    assert chat["max_tokens"] == 16 and "stream_options" not in chat


def test_a_stream_asks_for_the_usage() -> None:
    chat = chat_of(request(stream=True), streaming=True)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("thinking", "switch"), [({"type": "enabled", "budget_tokens": 8}, True), ({"type": "disabled"}, False)]
)
def test_thinking_is_the_template_switch(thinking: dict[str, Any], switch: bool) -> None:
    assert chat_of(request(thinking=thinking))["enable_thinking"] is switch
    assert "enable_thinking" not in chat_of(request())


def test_a_named_tool_and_an_erroring_result() -> None:
    chat = chat_of(
        request(
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c", "is_error": True}]},
            ],
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "f"},
        )
    )
    assert chat["messages"] == [{"role": "tool", "content": "Error: ", "tool_call_id": "c"}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}


BAD = [
    ({"max_tokens": None}, "max_tokens", Failure.INVALID_REQUEST),
    ({"temperature": 1.2}, "temperature", Failure.INVALID_REQUEST),
    ({"messages": []}, "messages", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user"}]}, "messages[0].content", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "messages[0].content[0]", Failure.UNSUPPORTED),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}, "messages[0].content[0].type",
     Failure.INVALID_REQUEST),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f"}]}]},
     "messages[0].content[0].input", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": 5}]}]},
     "messages[0].content[0].content", Failure.INVALID_REQUEST),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text",
     Failure.INVALID_REQUEST),
    ({"system": 5}, "system", Failure.INVALID_REQUEST),
    ({"system": [{"type": "image"}]}, "system[0]", Failure.INVALID_REQUEST),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema", Failure.INVALID_REQUEST),
    ({"tools": [{"name": "s", "type": "web_search_20250305", "input_schema": {}}]}, "tools[0].type",
     Failure.UNSUPPORTED),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name", Failure.INVALID_REQUEST),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type", Failure.INVALID_REQUEST),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens", Failure.INVALID_REQUEST),
    ({"thinking": {"type": "enabled", "budget_tokens": 16}}, "thinking.budget_tokens", Failure.INVALID_REQUEST),
    ({"thinking": {"type": "maybe"}}, "thinking.type", Failure.INVALID_REQUEST),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param", "failure"), BAD)
def test_bad_requests_name_their_field(fields: dict[str, Any], param: str, failure: Failure) -> None:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ApiError) as info:
        translate(json_format.ParseDict(body, pb.CreateMessageRequest()), streaming=False)
    assert (info.value.param, info.value.failure) == (param, failure)


@pytest.mark.parametrize(
    ("chat_param", "messages_param"),
    [
        ("messages[0].content", "system"),
        ("messages[2]", "messages[1]"),
        ("messages[9].role", "messages"),
        ("stop", "stop_sequences"),
        ("stop[1]", "stop_sequences[1]"),
        ("tools[0].function.parameters.properties", "tools[0].input_schema.properties"),
        ("tools[1].function.name", "tools[1].name"),
        ("tools[1]", "tools[1]"),
        ("tool_choice.function.name", "tool_choice"),
        ("parallel_tool_calls", "tool_choice.disable_parallel_tool_use"),
        ("enable_thinking", "thinking"),
        ("max_tokens", "max_tokens"),
        ("top_k", "top_k"),
    ],
)
def test_chat_errors_are_renamed(chat_param: str, messages_param: str) -> None:
    translation = translate(request(system="s", messages=[{"role": "user", "content": "a"}] * 2), streaming=False)
    renamed = translation.renamed(invalid("bad", chat_param))
    assert (renamed.param, renamed.message, renamed.failure) == (messages_param, "bad", Failure.INVALID_REQUEST)


def test_count_tokens_needs_no_max_tokens() -> None:
    counted = pb.CountMessageTokensRequest(model="m", messages=[pb.InputMessage(role="user")])
    counted.messages[0].content.string_value = "hi"
    counted.thinking.type = "enabled"
    counted.thinking.budget_tokens = 2048
    chat = translate_count(counted).chat
    assert (chat.HasField("max_tokens"), chat.enable_thinking, len(chat.messages)) == (False, True, 1)
