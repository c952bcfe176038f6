"""transport.responses: chat results as Response objects, chat streams as the Responses API's typed events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from google.protobuf import json_format

from chatgen.chat.types import Choice, Delta, StreamItem, StreamStart, ToolCall, ToolCallDelta, Usage
from chatgen.errors import ApiError, Failure
from chatgen.transport.responses import (
    OutputIds,
    ResponseEvents,
    conversation_of,
    envelope,
    finish,
    output_items,
    response_id,
)
from chatgen.v1 import chatgen_pb2 as pb

CONVERSATION = "0123456789abcdef"


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_a_choice_becomes_output_items() -> None:
    calls = (ToolCall("c1", "f", '{"a": 1}'),)
    ids = OutputIds()
    items = [as_dict(i) for i in output_items(Choice(0, "Sure.", "tool_calls", "hm", tool_calls=calls), ids)]
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call"]
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "hm"}] and items[0]["id"] == ids.reasoning
    assert items[1]["content"] == [{"type": "output_text", "text": "Sure.", "annotations": [], "logprobs": []}]
    assert items[2] == {
        "type": "function_call", "id": ids.call(0), "status": "completed", "call_id": "c1", "name": "f",
        "arguments": '{"a": 1}',
    }  # fmt: skip
    # A call alone: no empty message item beside it.
    assert [as_dict(i)["type"] for i in output_items(Choice(0, "", "tool_calls", tool_calls=calls), ids)] == [
        "function_call"
    ]


def test_envelope_and_finish() -> None:
    request = json_format.ParseDict(
        {"model": "m", "input": "hi", "max_output_tokens": 3, "metadata": {"k": "v"}, "store": False},
        pb.CreateResponseRequest(),
    )
    response = envelope(request, response_id(CONVERSATION, "chatcmpl-abc"), "served")
    assert (response.id, response.status, response.model) == (f"resp_{CONVERSATION}abc", "in_progress", "served")
    assert response.store is False
    assert response.tool_choice.string_value == "auto" and response.parallel_tool_calls is True
    assert response.text.format.type == "text" and dict(response.metadata) == {"k": "v"}
    choice = Choice(0, "Par", "length")
    response.output.extend(output_items(choice, OutputIds()))
    finish(response, choice, Usage(10, 3), reasoning_tokens=0)
    reply = as_dict(response)
    assert reply["status"] == "incomplete" and reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert reply["output"][0]["status"] == "incomplete"
    assert reply["usage"]["total_tokens"] == 13 and reply["usage"]["output_tokens"] == 3


def test_every_turn_of_a_conversation_has_its_key() -> None:
    """The key leads every response id of one conversation, so that a gateway routes on previous_response_id."""
    first = response_id(conversation_of(None, CONVERSATION), "chatcmpl-" + "1" * 32)
    assert first == f"resp_{CONVERSATION}{'1' * 32}"
    second = response_id(conversation_of(first, "fedcba9876543210"), "chatcmpl-" + "2" * 32)
    assert second.startswith(f"resp_{CONVERSATION}") and second != first
    # A named key of the wrong form, or none: a new conversation, with a key of the right form.
    fresh = {conversation_of(None, named) for named in (None, "not-hex", "0123456789abcdef0", "ABC")}
    assert len(fresh) == 4 and all(len(key) == 16 and int(key, 16) >= 0 for key in fresh)
    # An id that carries no key (another system's) starts a new conversation too.
    assert conversation_of("resp_nope", None) != conversation_of("resp_nope", None)


async def _items(*items: StreamItem) -> AsyncGenerator[StreamItem, None]:
    for item in items:
        yield item


async def _events(events: ResponseEvents, *items: StreamItem) -> list[pb.ResponseStreamEvent]:
    return [event async for event in events.chunks(_items(*items))]


async def test_a_stream_becomes_typed_events_in_order() -> None:
    stored: list[pb.Response] = []

    async def done(response: pb.Response, choice: Choice, usage: Usage) -> None:
        finish(response, choice, usage, reasoning_tokens=2)
        stored.append(response)

    events = ResponseEvents()
    events.begin(envelope(pb.CreateResponseRequest(model="m"), "", "m"), CONVERSATION, done)
    out = await _events(
        events,
        StreamStart("chatcmpl-xyz", 1, False),
        Delta("", reasoning="thinking"),
        Delta("Hel"),
        Delta("lo"),
        Delta("", tool_calls=(ToolCallDelta(0, "c1", "f", '{"a"'),)),
        Delta("", finish_reason="tool_calls", tool_calls=(ToolCallDelta(0, arguments=": 1}"),)),
        Usage(5, 7),
    )
    assert [e.type for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in out] == list(range(len(out)))
    assert out[0].response.id == f"resp_{CONVERSATION}xyz" and out[0].response.status == "in_progress"
    assert [e.output_index for e in out if e.type == "response.output_item.added"] == [0, 1, 2]
    assert out[12].text == "Hello" and out[18].arguments == '{"a": 1}'
    final = as_dict(out[-1].response)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert stored and stored[0].id == f"resp_{CONVERSATION}xyz"


async def test_events_are_numbered_and_an_error_fails_the_response() -> None:
    events = ResponseEvents()
    events.begin(envelope(pb.CreateResponseRequest(model="m"), "", "m"), CONVERSATION, _no_store)
    out = await _events(events, StreamStart("chatcmpl-1", 1, False), Delta("Hi", finish_reason="stop"))
    assert out[0].type == "response.created" and [e.sequence_number for e in out] == list(range(len(out)))
    failed = as_dict(events.error(ApiError(Failure.OVERLOADED, "busy")))
    assert failed["type"] == "response.failed" and failed["sequence_number"] == len(out)
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"] == "busy"


async def _no_store(response: pb.Response, choice: Choice, usage: Usage) -> None:
    finish(response, choice, usage, reasoning_tokens=0)
