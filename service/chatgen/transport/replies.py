"""The chat layer's results -> reply messages: unary replies, and the chunks of a stream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from chatgen.chat.types import (
    Choice,
    Delta,
    ModelInfo,
    Result,
    StreamItem,
    StreamStart,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from chatgen.errors import ApiError
from chatgen.v1 import chatgen_pb2 as pb

# OpenAI (and vLLM) send -9999.0 for an impossible token: JSON has no -Infinity.
_MIN_LOGPROB = -9999.0


def usage_pb(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)


def error_pb(err: ApiError) -> pb.ErrorDetail:
    """The error object of a stream's error event: the same JSON as every other error reply."""
    return json_format.ParseDict(err.openai_body()["error"], pb.ErrorDetail())


def _logprob(value: float | None) -> float:
    return _MIN_LOGPROB if value is None else max(value, _MIN_LOGPROB)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs_pb(logprobs: Sequence[TokenLogprob]) -> pb.ChatLogprobs:
    return pb.ChatLogprobs(
        content=[
            pb.TokenLogprob(
                token=lp.token,
                logprob=_logprob(lp.logprob),
                bytes=_utf8(lp.token),
                top_logprobs=[pb.TopLogprob(token=t, logprob=_logprob(v), bytes=_utf8(t)) for t, v in lp.top],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs_pb(logprobs: Sequence[TokenLogprob], offset: int) -> pb.CompletionLogprobs:
    """Legacy completions shape; `offset` is where the first of these tokens starts in the choice's text.
    A prompt's first token (under echo) has no logprob: null in both arrays, as OpenAI and vLLM send it."""
    out = pb.CompletionLogprobs()
    for lp in logprobs:
        out.tokens.append(lp.token)
        if lp.logprob is None:
            out.token_logprobs.add().null_value = struct_pb2.NULL_VALUE
            out.top_logprobs.add().null_value = struct_pb2.NULL_VALUE
        else:
            out.token_logprobs.add().number_value = _logprob(lp.logprob)
            # OpenAI's shape: the `logprobs` most likely tokens and always the chosen one (so logprobs 0 gives
            # {chosen: logprob}, never an empty entry that would serialize as null).
            top = {lp.token: _logprob(lp.logprob), **{t: _logprob(v) for t, v in lp.top}}
            out.top_logprobs.add().struct_value.update(top)
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


def prompt_logprobs_pb(entries: Sequence[TokenLogprob]) -> struct_pb2.ListValue:
    """vLLM's prompt_logprobs: per prompt token, null for the first, else {"<id>": {logprob, rank, decoded_token}}
    for the token itself and its alternatives (the most likely rank 1, 2, ...)."""
    out = struct_pb2.ListValue()
    for lp in entries:
        if lp.logprob is None:
            out.append(None)
            continue
        step = {str(lp.token_id): {"logprob": _logprob(lp.logprob), "rank": lp.rank, "decoded_token": lp.token}}
        for rank, (token_id, (text, value)) in enumerate(zip(lp.top_ids, lp.top, strict=False), start=1):
            step.setdefault(str(token_id), {"logprob": _logprob(value), "rank": rank, "decoded_token": text})
        out.append(step)
    return out


def _assistant_message(choice: Choice) -> pb.ChatCompletionMessage:
    message = pb.ChatCompletionMessage(role="assistant")
    # OpenAI leaves content out (null) when the model only called tools.
    if choice.text or not choice.tool_calls:
        message.content = choice.text
    if choice.reasoning is not None:
        message.reasoning_content = message.reasoning = choice.reasoning
    for call in choice.tool_calls:
        message.tool_calls.add(
            id=call.id, type="function", function=pb.FunctionCall(name=call.name, arguments=call.arguments)
        )
    return message


def chat_completion(result: Result, model: str) -> pb.CreateChatCompletionResponse:
    reply = pb.CreateChatCompletionResponse(
        id=result.id, object="chat.completion", created=int(time.time()), model=model, usage=usage_pb(result.usage)
    )
    for c in result.choices:
        choice = reply.choices.add(index=c.index, message=_assistant_message(c), finish_reason=c.finish_reason)
        if c.logprobs is not None:
            choice.logprobs.CopyFrom(chat_logprobs_pb(c.logprobs))
        if c.token_ids is not None:
            choice.token_ids.extend(c.token_ids)
    if result.choices and result.choices[0].prompt_token_ids is not None:
        reply.prompt_token_ids.extend(result.choices[0].prompt_token_ids)
    if result.scored_prompt and result.choices:
        reply.prompt_logprobs.CopyFrom(prompt_logprobs_pb(result.choices[0].prompt_logprobs))
    return reply


def completion(result: Result, model: str) -> pb.CreateCompletionResponse:
    reply = pb.CreateCompletionResponse(
        id=result.id, object="text_completion", created=int(time.time()), model=model, usage=usage_pb(result.usage)
    )
    for c in result.choices:
        choice = reply.choices.add(index=c.index, text=c.text, finish_reason=c.finish_reason)
        if c.logprobs is not None:
            # With echo the prompt's own tokens lead (from offset 0); without, the text is the completion.
            choice.logprobs.CopyFrom(completion_logprobs_pb((*c.prompt_logprobs, *c.logprobs), 0))
        if c.token_ids is not None:
            choice.token_ids.extend(c.token_ids)
        if c.prompt_token_ids is not None:
            choice.prompt_token_ids.extend(c.prompt_token_ids)
        if result.scored_prompt:
            choice.prompt_logprobs.CopyFrom(prompt_logprobs_pb(c.prompt_logprobs))
    return reply


def _tool_call_delta_pb(d: ToolCallDelta) -> pb.ToolCallDelta:
    out = pb.ToolCallDelta(index=d.index)
    if d.id is not None:
        out.id = d.id
        out.type = "function"
    if d.name is not None:
        out.function.name = d.name
    if d.arguments is not None:
        out.function.arguments = d.arguments
    return out


Chunk = Any  # pb.StreamChatCompletionResponse | pb.StreamCompletionResponse


class StreamChunks:
    """One stream's items -> its chunks, each naming `model` (what the request sent: the served model or a LoRA
    adapter over it)."""

    chunk_type: Any
    object_name: str

    def __init__(self, model: str) -> None:
        self.envelope: dict[str, Any] = {"object": self.object_name, "created": int(time.time()), "model": model}
        self.id = ""

    def error(self, err: ApiError) -> Chunk:
        """The chunk that ends a REST stream already under way (the completion id, once known)."""
        return self.chunk_type(id=self.id, **self.envelope, error=error_pb(err))

    async def chunks(self, items: AsyncGenerator[StreamItem, None]) -> AsyncGenerator[Chunk, None]:
        start = StreamStart("", 1, False)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Delta):
                    yield self._delta(item, start)
                elif isinstance(item, StreamStart):
                    start, self.id = item, item.id
                    for chunk in self._opening(start):
                        yield chunk
                else:
                    yield self.chunk_type(id=start.id, **self.envelope, usage=usage_pb(item))

    def _opening(self, start: StreamStart) -> list[Chunk]:
        return []

    def _delta(self, d: Delta, start: StreamStart) -> Chunk:
        raise NotImplementedError


class ChatChunks(StreamChunks):
    chunk_type = pb.StreamChatCompletionResponse
    object_name = "chat.completion.chunk"

    def _opening(self, start: StreamStart) -> list[Chunk]:
        """Each choice opens with the assistant role, as OpenAI streams it; the first chunk carries the prompt's
        token ids when they were asked for, as vLLM sends them."""
        chunks = [
            pb.StreamChatCompletionResponse(
                id=start.id,
                **self.envelope,
                choices=[
                    pb.ChatCompletionChunkChoice(index=i, delta=pb.ChatCompletionDelta(role="assistant", content=""))
                ],
            )
            for i in range(start.n)
        ]
        if start.prompts is not None and chunks:
            chunks[0].prompt_token_ids.extend(start.prompts[0])
        return chunks

    def _delta(self, d: Delta, start: StreamStart) -> Chunk:
        choice = pb.ChatCompletionChunkChoice(index=d.index, delta=pb.ChatCompletionDelta())
        if d.reasoning:
            choice.delta.reasoning_content = choice.delta.reasoning = d.reasoning
        if d.text:
            choice.delta.content = d.text
        for call in d.tool_calls:
            choice.delta.tool_calls.append(_tool_call_delta_pb(call))
        if d.finish_reason:
            choice.finish_reason = d.finish_reason
        if start.logprobs:
            choice.logprobs.CopyFrom(chat_logprobs_pb(d.logprobs))
        choice.token_ids.extend(d.token_ids)
        chunk = pb.StreamChatCompletionResponse(id=start.id, **self.envelope, choices=[choice])
        if d.usage is not None:
            chunk.usage.CopyFrom(usage_pb(d.usage))
        return chunk


class CompletionChunks(StreamChunks):
    chunk_type = pb.StreamCompletionResponse
    object_name = "text_completion"

    def __init__(self, model: str) -> None:
        super().__init__(model)
        # Characters of each choice's text sent so far (the logprobs' text offsets).
        self._offsets: dict[int, int] = {}
        # Choices whose first chunk went out (it carries the prompt's token ids, when asked for).
        self._opened: set[int] = set()

    def _delta(self, d: Delta, start: StreamStart) -> Chunk:
        choice = pb.CompletionChunkChoice(index=d.index, text=d.text, token_ids=d.token_ids)
        if start.prompts is not None and d.index not in self._opened:
            self._opened.add(d.index)
            choice.prompt_token_ids.extend(start.prompts[d.index * len(start.prompts) // start.n])
        if d.finish_reason:
            choice.finish_reason = d.finish_reason
        if start.logprobs:
            offset = self._offsets.get(d.index, 0)
            choice.logprobs.CopyFrom(completion_logprobs_pb((*d.prompt_logprobs, *d.logprobs), offset))
            self._offsets[d.index] = offset + len(d.text)
        chunk = pb.StreamCompletionResponse(id=start.id, **self.envelope, choices=[choice])
        if d.usage is not None:
            chunk.usage.CopyFrom(usage_pb(d.usage))
        return chunk


def model_card(info: ModelInfo, abilities: list[str]) -> pb.Model:
    """GET /v1/models/{id}: OpenAI's model object plus the context length and Xinference's type and abilities."""
    return pb.Model(
        id=info.name,
        object="model",
        created=info.created,
        owned_by="chatgen",
        max_model_len=info.max_model_len,
        model_type="LLM",
        model_ability=abilities,
        root=info.path,
        # The base model has no parent (vLLM's null); an adapter's card names the base model.
        parent=struct_pb2.Value(null_value=struct_pb2.NULL_VALUE),
    )
