"""The Messages API's replies: a chat result as Anthropic's message, and a chat stream as Anthropic's events
(message_start, then per content block content_block_start / _delta / _stop, then message_delta and
message_stop), for gRPC callers as StreamMessageResponse messages and for REST callers as named Server-Sent
Events (`event: <type>` + `data: <JSON>`, no `[DONE]`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator

from chatgen.chat.types import Choice, Delta, Result, StreamItem, StreamStart, ToolCall, ToolCallDelta, Usage
from chatgen.errors import ApiError
from chatgen.v1 import chatgen_pb2 as pb

# Chat finish reasons -> Anthropic's stop reasons ("stop" is end_turn, or stop_sequence when a stop string ended it).
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def message_id(completion_id: str) -> str:
    """msg_<hex>: the chat layer's id (chatcmpl-<hex>) in Anthropic's form."""
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def stop_reason(finish_reason: str, stop_sequence: str | None) -> str:
    if finish_reason == "stop":
        return "stop_sequence" if stop_sequence is not None else "end_turn"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def _tool_use(call: ToolCall) -> pb.ContentBlock | None:
    """A call as a tool_use block; None when its arguments are not a JSON object (a call cut off by max_tokens),
    which Anthropic's tool_use input must be."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return None
    if not isinstance(arguments, dict):
        return None
    block = pb.ContentBlock(type="tool_use", id=call.id, name=call.name)
    block.input.update(arguments)
    return block


def message_reply(result: Result, model: str) -> pb.CreateMessageResponse:
    choice: Choice = result.choices[0]
    reply = pb.CreateMessageResponse(id=message_id(result.id), type="message", role="assistant", model=model)
    if choice.reasoning:
        reply.content.add(type="thinking", thinking=choice.reasoning, signature="")
    if choice.text:
        reply.content.add(type="text", text=choice.text)
    calls = [block for block in map(_tool_use, choice.tool_calls) if block is not None]
    reply.content.extend(calls)
    finish = choice.finish_reason
    if finish == "tool_calls" and not calls:
        finish = "stop"
    elif finish == "stop" and calls:
        # A forced call ends as "stop" in chat (OpenAI's finish_reason for a named function); Anthropic says tool_use.
        finish = "tool_calls"
    reply.stop_reason = stop_reason(finish, choice.stop_sequence)
    if choice.stop_sequence is not None and reply.stop_reason == "stop_sequence":
        reply.stop_sequence = choice.stop_sequence
    reply.usage.input_tokens = result.usage.prompt_tokens
    reply.usage.output_tokens = result.usage.completion_tokens
    return reply


def count_reply(tokens: int) -> pb.CountMessageTokensResponse:
    return pb.CountMessageTokensResponse(input_tokens=tokens)


class MessageEvents:
    """One stream's items -> Anthropic's events. A block is open at a time: thinking, text, or one tool_use
    block per call; a delta of another kind closes it and opens the next."""

    def __init__(self, model: str) -> None:
        self._open: str | None = None
        self._index = -1
        # Whether a tool_use block was sent (the stop reason is then tool_use).
        self._called = False
        self._message = pb.CreateMessageResponse(type="message", role="assistant", model=model)

    def error(self, err: ApiError) -> pb.StreamMessageResponse:
        """The event that ends a gateway stream already under way."""
        event = pb.StreamMessageResponse(type="error")
        body = err.anthropic_body()["error"]
        assert isinstance(body, dict)
        event.error.type, event.error.message = body["type"], body["message"]
        return event

    async def chunks(self, items: AsyncGenerator[StreamItem, None]) -> AsyncGenerator[pb.StreamMessageResponse, None]:
        finish, stop_sequence, usage = "stop", None, Usage(0, 0)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Delta):
                    for event in self._delta(item):
                        yield event
                    if item.finish_reason:
                        finish, stop_sequence = item.finish_reason, item.stop_sequence
                elif isinstance(item, StreamStart):
                    yield self._start(item)
                    yield pb.StreamMessageResponse(type="ping")
                else:
                    usage = item
        for event in self._close():
            yield event
        if finish == "stop" and self._called:
            finish = "tool_calls"
        end = pb.StreamMessageResponse(type="message_delta")
        end.delta.stop_reason = stop_reason(finish, stop_sequence)
        if stop_sequence is not None and end.delta.stop_reason == "stop_sequence":
            end.delta.stop_sequence = stop_sequence
        end.usage.input_tokens, end.usage.output_tokens = usage.prompt_tokens, usage.completion_tokens
        yield end
        yield pb.StreamMessageResponse(type="message_stop")

    def _start(self, start: StreamStart) -> pb.StreamMessageResponse:
        self._message.id = message_id(start.id)
        self._message.usage.input_tokens = start.prompt_tokens
        return pb.StreamMessageResponse(type="message_start", message=self._message)

    def _delta(self, d: Delta) -> list[pb.StreamMessageResponse]:
        out: list[pb.StreamMessageResponse] = []
        if d.reasoning:
            out += self._block("thinking", pb.ContentBlock(type="thinking", thinking="", signature=""))
            out.append(self._piece(pb.MessageDelta(type="thinking_delta", thinking=d.reasoning)))
        if d.text:
            out += self._block("text", pb.ContentBlock(type="text", text=""))
            out.append(self._piece(pb.MessageDelta(type="text_delta", text=d.text)))
        for call in d.tool_calls:
            out += self._call(call)
        return out

    def _call(self, call: ToolCallDelta) -> list[pb.StreamMessageResponse]:
        out: list[pb.StreamMessageResponse] = []
        if call.id is not None or call.name is not None:
            block = pb.ContentBlock(type="tool_use", id=call.id or "", name=call.name or "")
            block.input.SetInParent()
            self._called = True
            # Each call a block of its own, even right after another call's.
            out += self._close()
            out += self._block("tool_use", block)
        if call.arguments:
            out.append(self._piece(pb.MessageDelta(type="input_json_delta", partial_json=call.arguments)))
        return out

    def _block(self, kind: str, block: pb.ContentBlock) -> list[pb.StreamMessageResponse]:
        """Open a block of `kind` unless one is open already (closing a block of another kind first)."""
        if self._open == kind:
            return []
        out = self._close()
        self._open, self._index = kind, self._index + 1
        out.append(pb.StreamMessageResponse(type="content_block_start", index=self._index, content_block=block))
        return out

    def _close(self) -> list[pb.StreamMessageResponse]:
        if self._open is None:
            return []
        self._open = None
        return [pb.StreamMessageResponse(type="content_block_stop", index=self._index)]

    def _piece(self, delta: pb.MessageDelta) -> pb.StreamMessageResponse:
        return pb.StreamMessageResponse(type="content_block_delta", index=self._index, delta=delta)
