"""chat.validation.responses: Responses API requests -> the chat requests they stand for, the normalized items the
store keeps, and errors named by the Responses request's fields."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation.responses import conversation, translate
from chatgen.errors import ApiError, Failure, invalid
from chatgen.v1 import chatgen_pb2 as pb


def request(**fields: Any) -> pb.CreateResponseRequest:
    return json_format.ParseDict({"model": "m", "input": "hi", **fields}, pb.CreateResponseRequest())


def chat_of(message: pb.CreateResponseRequest, earlier: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    chat = translate(message, earlier or [], streaming=False).chat
    return json_format.MessageToDict(chat, preserving_proto_field_name=True)


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    chat = chat_of(request(instructions="Be brief.", max_output_tokens=9, temperature=0.2, top_p=0.9, user="u1"))
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
    }


def test_items_become_chat_messages_and_come_back_normalized() -> None:
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "in Paris?"},
        ]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
    ]  # fmt: skip
    translation = translate(request(input=items), [], streaming=True)
    chat = json_format.MessageToDict(translation.chat, preserving_proto_field_name=True)
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert chat["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        # Consecutive calls are one assistant turn; the reasoning item is not shown to the model again.
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    assert chat["stream_options"] == {"include_usage": True}
    kinds = [(item["type"], item["id"][:3]) for item in translation.items]
    assert kinds == [
        ("message", "msg"), ("message", "msg"), ("reasoning", "rs_"), ("function_call", "fc_"),
        ("function_call", "fc_"), ("function_call_output", "fco"), ("function_call_output", "fco"),
    ]  # fmt: skip
    assert translation.items[0]["content"] == [{"type": "input_text", "text": "Use tools."}]
    assert translation.items[6]["output"] == "noon"


def test_earlier_items_come_first_and_given_ids_are_kept() -> None:
    earlier = [{"type": "message", "id": "msg_1", "role": "user", "content": [{"type": "input_text", "text": "a"}]}]
    translation = translate(request(input=[{"id": "msg_2", "role": "user", "content": "b"}]), earlier, False)
    assert [item["id"] for item in translation.items] == ["msg_1", "msg_2"]
    assert translation.origins == ("previous_response_id", "input[0]")


def test_conversation_appends_the_stored_output() -> None:
    output = {"type": "message", "id": "msg_o", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}
    response = json_format.ParseDict({"output": [output]}, pb.Response())
    items = conversation('[{"type": "message", "id": "msg_i", "role": "user", "content": []}]', response)
    assert [item["id"] for item in items] == ["msg_i", "msg_o"]


def test_tools_tool_choice_text_format_and_reasoning() -> None:
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = chat_of(
        request(
            tools=[tool],
            tool_choice={"type": "function", "name": "f"},
            parallel_tool_calls=False,
            text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
            reasoning={"effort": "none"},
        )
    )
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False and chat["enable_thinking"] is False
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    assert chat_of(request(reasoning={"effort": "low", "summary": "auto"}))["enable_thinking"] is True
    assert "enable_thinking" not in chat_of(request(reasoning={"summary": "auto"}))
    assert chat_of(request(enable_thinking=False))["enable_thinking"] is False
    assert chat_of(request(enable_thinking=True, reasoning={"effort": "high"}))["enable_thinking"] is True


@pytest.mark.parametrize(
    ("fields", "param", "failure"),
    [
        ({"input": 3}, "input", Failure.INVALID_REQUEST),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content", Failure.INVALID_REQUEST),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", Failure.UNSUPPORTED),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", Failure.INVALID_REQUEST),
        ({"tools": [{"type": "mcp"}]}, "tools[0].type", Failure.UNSUPPORTED),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice", Failure.INVALID_REQUEST),
        ({"reasoning": {"summary": "long"}}, "reasoning.summary", Failure.INVALID_REQUEST),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", Failure.INVALID_REQUEST),
        ({"background": True}, "background", Failure.UNSUPPORTED),
        ({"conversation": "conv_1"}, "conversation", Failure.UNSUPPORTED),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", Failure.UNSUPPORTED),
        ({"truncation": "auto"}, "truncation", Failure.UNSUPPORTED),
        ({"top_logprobs": 2}, "top_logprobs", Failure.UNSUPPORTED),
        ({"max_tool_calls": 1}, "max_tool_calls", Failure.UNSUPPORTED),
        ({"include": ["message.output_text.logprobs"]}, "include", Failure.UNSUPPORTED),
        ({"include": ["everything"]}, "include", Failure.INVALID_REQUEST),
        ({"enable_thinking": True, "reasoning": {"effort": "none"}}, "enable_thinking", Failure.INVALID_REQUEST),
    ],
)
def test_bad_requests(fields: dict[str, Any], param: str, failure: Failure) -> None:
    with pytest.raises(ApiError) as err:
        translate(request(**fields), [], streaming=False)
    assert (err.value.param, err.value.failure) == (param, failure)


def test_what_needs_no_work_is_accepted() -> None:
    chat_of(
        request(
            background=False,
            truncation="disabled",
            top_logprobs=0,
            include=["reasoning.encrypted_content"],
            service_tier="auto",
            prompt_cache_key="k",
            safety_identifier="s",
        )
    )


def test_chat_errors_are_renamed_to_the_responses_fields() -> None:
    translation = translate(request(instructions="x", input=[{"role": "user", "content": "a"}]), [], False)
    for chat_param, param in [
        ("max_tokens", "max_output_tokens"),
        ("messages[1].content", "input[0]"),
        ("messages[0]", "instructions"),
        ("tools[2].function.parameters.x", "tools[2].parameters.x"),
        ("tools[0].function.name", "tools[0].name"),
        ("response_format.json_schema.schema.type", "text.format.schema.type"),
        ("enable_thinking", "reasoning"),
        ("temperature", "temperature"),
    ]:
        assert translation.renamed(invalid("bad", chat_param)).param == param
