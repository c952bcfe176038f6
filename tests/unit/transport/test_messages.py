"""transport.messages: chat results as Anthropic messages, chat streams as Anthropic's events (and their SSE)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from google.protobuf import json_format

from chatgen.chat.types import Choice, Delta, Result, StreamItem, StreamStart, ToolCall, ToolCallDelta, Usage
from chatgen.errors import ApiError, Failure
from chatgen.transport.messages import MessageEvents, message_reply, stop_reason


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_a_result_becomes_a_message() -> None:
    calls = (ToolCall("call_1", "f", '{"a": 1}'), ToolCall("call_2", "g", '{"cut'))
    choice = Choice(0, "Sure.", "tool_calls", reasoning="hm", tool_calls=calls)
    reply = as_dict(message_reply(Result("chatcmpl-abc", [choice], Usage(7, 5)), "m"))
    assert reply == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "thinking", "thinking": "hm", "signature": ""},
            {"type": "text", "text": "Sure."},
            # The second call's arguments are not a JSON object (cut off): no tool_use block for it.
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1.0}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 7, "output_tokens": 5},
    }


def test_stop_reasons() -> None:
    assert stop_reason("stop", None) == "end_turn"
    assert stop_reason("stop", "END") == "stop_sequence"
    assert stop_reason("length", None) == "max_tokens"
    assert stop_reason("tool_calls", None) == "tool_use"
    stopped = as_dict(
        message_reply(Result("chatcmpl-x", [Choice(0, "a", "stop", stop_sequence="END")], Usage(1, 1)), "m")
    )
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    # A forced call ends as "stop" in chat; Anthropic calls that tool_use.
    forced = Choice(0, "", "stop", tool_calls=(ToolCall("c", "f", "{}"),))
    assert message_reply(Result("chatcmpl-x", [forced], Usage(1, 1)), "m").stop_reason == "tool_use"


async def _items(*items: StreamItem) -> AsyncGenerator[StreamItem, None]:
    for item in items:
        yield item


async def _events(events: MessageEvents, *items: StreamItem) -> list[dict[str, Any]]:
    return [as_dict(e) async for e in events.chunks(_items(*items))]


async def test_a_stream_opens_one_block_at_a_time() -> None:
    events = await _events(
        MessageEvents("m"),
        StreamStart("chatcmpl-abc", 1, False, prompt_tokens=9),
        Delta("", reasoning="think"),
        Delta("", reasoning="ing"),
        Delta("Hi"),
        Delta("", tool_calls=(ToolCallDelta(0, "call_1", "f"),)),
        Delta("", tool_calls=(ToolCallDelta(0, arguments='{"a"'),)),
        Delta("", tool_calls=(ToolCallDelta(0, arguments=": 1}"),)),
        Delta("", tool_calls=(ToolCallDelta(1, "call_2", "g", "{}"),)),
        Delta("", "tool_calls"),
        Usage(9, 12),
    )
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_delta", 3), ("content_block_stop", 3),
        ("message_delta", None), ("message_stop", None),
    ]  # fmt: skip
    start = events[0]["message"]
    assert (start["id"], start["usage"], start.get("content", [])) == ("msg_abc", {"input_tokens": 9}, [])
    assert events[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [events[i]["delta"] for i in (3, 4, 7)] == [
        {"type": "thinking_delta", "thinking": "think"},
        {"type": "thinking_delta", "thinking": "ing"},
        {"type": "text_delta", "text": "Hi"},
    ]
    assert events[9]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    assert "".join(events[i]["delta"]["partial_json"] for i in (10, 11)) == '{"a": 1}'
    assert events[-2]["delta"] == {"stop_reason": "tool_use"}
    assert events[-2]["usage"] == {"input_tokens": 9, "output_tokens": 12}


async def test_a_stream_error_is_anthropics_error_event() -> None:
    # What a gateway stream already under way ends with (the gateway writes it as `event: error`).
    events = MessageEvents("m")
    first = await anext(events.chunks(_items(StreamStart("chatcmpl-a", 1, False))))
    assert first.type == "message_start"
    later = json_format.MessageToDict(events.error(ApiError(Failure.OVERLOADED, "busy")))
    assert later == {"type": "error", "error": {"type": "rate_limit_error", "message": "busy"}}
