"""The Responses API's replies: a chat result as OpenAI's Response object (reasoning, message and function_call
output items), and a chat stream as OpenAI's typed events, each with its sequence_number — for gRPC callers as
ResponseStreamEvent messages, for REST callers as named Server-Sent Events (`event: <type>` + `data: <JSON>`)."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from chatgen.chat.types import Choice, Delta, StreamItem, StreamStart, ToolCall, Usage
from chatgen.chat.validation.responses import item_id
from chatgen.errors import ApiError
from chatgen.v1 import chatgen_pb2 as pb

# A conversation's key: 16 hex digits that lead each of its responses' ids (resp_<conversation><hex>), so that a
# gateway can send every turn of one conversation to the same replica (whose prefix cache holds it) from nothing
# but the turn's previous_response_id. The shared gateway's Lua filter reads it with the same pattern.
CONVERSATION = re.compile(r"[0-9a-fA-F]{16}")
# The metadata that names a new conversation's key: the shared gateway sends it with a conversation's first turn,
# having routed that turn by this key, so that the turns after it (which carry it in previous_response_id) reach
# the same replica.
CONVERSATION_KEY = "x-chatgen-conversation"


def response_id(conversation: str, completion_id: str) -> str:
    """resp_<conversation><hex>: the chat layer's id (chatcmpl-<hex>) in the Responses API's form, led by its
    conversation's key."""
    return f"resp_{conversation}{completion_id.removeprefix('chatcmpl-')}"


def conversation_of(previous_response_id: str | None, named: str | None) -> str:
    """The conversation a new response belongs to: its previous response's, else the one the caller named
    (CONVERSATION_KEY), else a new one."""
    if previous_response_id is not None:
        found = CONVERSATION.match(previous_response_id.removeprefix("resp_"))
        if found:
            return found.group()
    if named is not None and CONVERSATION.fullmatch(named):
        return named
    return uuid.uuid4().hex[:16]


def envelope(request: pb.CreateResponseRequest, rid: str, model: str) -> pb.Response:
    """The Response with what the request set and no output yet (status in_progress)."""
    out = pb.Response(id=rid, object="response", created_at=int(time.time()), status="in_progress", model=model)
    for name in ("instructions", "max_output_tokens", "temperature", "top_p", "previous_response_id", "user"):
        if request.HasField(name):
            setattr(out, name, getattr(request, name))
    out.tools.extend(request.tools)
    if request.HasField("tool_choice"):
        out.tool_choice.CopyFrom(request.tool_choice)
    else:
        out.tool_choice.string_value = "auto"
    out.parallel_tool_calls = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    out.metadata.update(request.metadata)
    out.store = request.store if request.HasField("store") else True
    if request.HasField("text"):
        out.text.CopyFrom(request.text)
    else:
        out.text.format.type = "text"
    if request.HasField("reasoning"):
        out.reasoning.CopyFrom(request.reasoning)
    return out


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def reasoning_item(rid: str, text: str, status: str) -> pb.ResponseItem:
    item = pb.ResponseItem(type="reasoning", id=rid, status=status, summary=struct_pb2.ListValue())
    item.content.CopyFrom(_value([{"type": "reasoning_text", "text": text}]))
    return item


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(mid: str, text: str | None, status: str) -> pb.ResponseItem:
    item = pb.ResponseItem(type="message", id=mid, status=status, role="assistant")
    item.content.CopyFrom(_value([] if text is None else [text_part(text)]))
    return item


def call_item(fid: str, call: ToolCall, status: str) -> pb.ResponseItem:
    return pb.ResponseItem(
        type="function_call", id=fid, status=status, call_id=call.id, name=call.name, arguments=call.arguments
    )


def finish(response: pb.Response, choice: Choice, usage: Usage, reasoning_tokens: int) -> None:
    """Fill in the output, status and usage of a finished response."""
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    response.status = status
    if status == "incomplete":
        response.incomplete_details.reason = "max_output_tokens"
        for item in response.output:
            item.status = status
    u = response.usage
    u.input_tokens, u.output_tokens = usage.prompt_tokens, usage.completion_tokens
    u.total_tokens = usage.total_tokens
    u.input_tokens_details.cached_tokens = 0
    u.output_tokens_details.reasoning_tokens = reasoning_tokens


def output_items(choice: Choice, ids: OutputIds) -> list[pb.ResponseItem]:
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    out = []
    if choice.reasoning:
        out.append(reasoning_item(ids.reasoning, choice.reasoning, status))
    if choice.text or not choice.tool_calls:
        out.append(message_item(ids.message, choice.text, status))
    out.extend(call_item(ids.call(i), call, status) for i, call in enumerate(choice.tool_calls))
    return out


@dataclass
class OutputIds:
    """The ids of one response's output items, made once (a stream names them before they are whole)."""

    reasoning: str = field(default_factory=lambda: item_id("reasoning"))
    message: str = field(default_factory=lambda: item_id("message"))
    calls: dict[int, str] = field(default_factory=dict)

    def call(self, index: int) -> str:
        if index not in self.calls:
            self.calls[index] = item_id("function_call")
        return self.calls[index]


Finisher = Callable[[pb.Response, Choice, Usage], Awaitable[None]]


class ResponseEvents:
    """One stream's items -> the Responses API's events. Items open one at a time (reasoning, the message, each
    function call); an item of another kind closes the open one (its *.done events and output_item.done)."""

    def __init__(self) -> None:
        self._response = pb.Response()
        self._done: Finisher | None = None
        self._conversation = ""
        self._sequence = 0
        self._ids = OutputIds()
        self._open: str | None = None
        self._text: dict[str, str] = {"reasoning": "", "message": ""}
        self._calls: list[ToolCall] = []
        # The open item (its id names the deltas' item).
        self._pending = pb.ResponseItem()

    def begin(self, response: pb.Response, conversation: str, done: Finisher) -> None:
        """The response the stream fills in (no output yet), the conversation it is of (conversation_of), and what to
        call with it once the output is whole."""
        self._response, self._conversation, self._done = response, conversation, done

    def error(self, err: ApiError) -> pb.ResponseStreamEvent:
        """The event that ends a gateway stream already under way: the response, failed."""
        failed = pb.Response()
        failed.CopyFrom(self._response)
        failed.status = "failed"
        failed.error.code, failed.error.message = err.failure.value, err.message
        return self._event("response.failed", response=failed)

    def _event(self, kind: str, **fields: Any) -> pb.ResponseStreamEvent:
        event = pb.ResponseStreamEvent(type=kind, sequence_number=self._sequence, **fields)
        self._sequence += 1
        return event

    async def chunks(self, items: AsyncGenerator[StreamItem, None]) -> AsyncGenerator[pb.ResponseStreamEvent, None]:
        finish_reason, usage = "stop", Usage(0, 0)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Delta):
                    for event in self._delta(item):
                        yield event
                    finish_reason = item.finish_reason or finish_reason
                elif isinstance(item, StreamStart):
                    self._response.id = response_id(self._conversation, item.id)
                    yield self._event("response.created", response=self._response)
                    yield self._event("response.in_progress", response=self._response)
                else:
                    usage = item
        for event in self._close():
            yield event
        choice = Choice(
            0, self._text["message"], finish_reason, self._text["reasoning"] or None, tool_calls=tuple(self._calls)
        )
        if self._done is not None:
            await self._done(self._response, choice, usage)
        kind = "response.incomplete" if self._response.status == "incomplete" else "response.completed"
        yield self._event(kind, response=self._response)

    @property
    def _index(self) -> int:
        return len(self._response.output)

    def _delta(self, d: Delta) -> list[pb.ResponseStreamEvent]:
        out: list[pb.ResponseStreamEvent] = []
        if d.reasoning:
            out += self._item("reasoning", reasoning_item(self._ids.reasoning, "", "in_progress"))
            out += self._text_delta("reasoning", "response.reasoning_text.delta", d.reasoning)
        if d.text:
            out += self._item("message", message_item(self._ids.message, None, "in_progress"))
            out += self._text_delta("message", "response.output_text.delta", d.text)
        for call in d.tool_calls:
            if call.id is not None or call.name is not None:
                out += self._close()
                self._calls.append(ToolCall(call.id or "", call.name or "", ""))
                fid = self._ids.call(call.index)
                out += self._item("call", call_item(fid, self._calls[-1], "in_progress"))
            if call.arguments and self._calls:
                last = self._calls[-1]
                self._calls[-1] = ToolCall(last.id, last.name, last.arguments + call.arguments)
                out.append(self._piece("response.function_call_arguments.delta", delta=call.arguments))
        return out

    def _item(self, kind: str, item: pb.ResponseItem) -> list[pb.ResponseStreamEvent]:
        if self._open == kind and kind != "call":
            return []
        out = self._close()
        self._open = kind
        out.append(self._event("response.output_item.added", output_index=self._index, item=item))
        if kind != "call":
            part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else text_part("")
            out.append(self._part_event("response.content_part.added", item.id, part))
        # Held until done, so `_index` is this item's index meanwhile.
        self._pending = item
        return out

    def _part_event(self, kind: str, iid: str, part: dict[str, Any]) -> pb.ResponseStreamEvent:
        event = self._event(kind, output_index=self._index, item_id=iid, content_index=0)
        event.part.update(part)
        return event

    def _piece(self, kind: str, **fields: Any) -> pb.ResponseStreamEvent:
        return self._event(kind, output_index=self._index, item_id=self._pending.id, **fields)

    def _text_delta(self, kind: str, event: str, text: str) -> list[pb.ResponseStreamEvent]:
        self._text[kind] += text
        extra: dict[str, Any] = {"logprobs": struct_pb2.ListValue()} if kind == "message" else {}
        return [self._piece(event, content_index=0, delta=text, **extra)]

    def _close(self) -> list[pb.ResponseStreamEvent]:
        kind, self._open = self._open, None
        if kind is None:
            return []
        item = self._pending
        out = []
        if kind == "call":
            call = self._calls[-1]
            out.append(self._piece("response.function_call_arguments.done", arguments=call.arguments))
            done = call_item(item.id, call, "completed")
        else:
            text = self._text[kind]
            done_kind = "response.reasoning_text.done" if kind == "reasoning" else "response.output_text.done"
            extra: dict[str, Any] = {"logprobs": struct_pb2.ListValue()} if kind == "message" else {}
            out.append(self._piece(done_kind, content_index=0, text=text, **extra))
            part = {"type": "reasoning_text", "text": text} if kind == "reasoning" else text_part(text)
            out.append(self._part_event("response.content_part.done", item.id, part))
            if kind == "reasoning":
                done = reasoning_item(item.id, text, "completed")
            else:
                done = message_item(item.id, text, "completed")
        out.append(self._event("response.output_item.done", output_index=self._index, item=done))
        self._response.output.append(done)
        return out
