"""gRPC servicers for the Chat, Generate and Models services: service types -> protobuf replies."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import struct_pb2

from chatgen.chat.generation import Generation, Generator
from chatgen.chat.types import Choice, ToolCallDelta, Usage
from chatgen.engine.base import ModelInfo, TokenLogprob
from chatgen.errors import ChatgenError, Failure
from chatgen.transport import convert, sse
from chatgen.transport import errors as wire
from chatgen.transport.calls import CallLog, CallRecord
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

# OpenAI (and vLLM) send -9999.0 for an impossible token: JSON has no -Infinity.
_MIN_LOGPROB = -9999.0


def usage_pb(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)


def error_pb(err: ChatgenError) -> pb.ErrorDetail:
    detail = pb.ErrorDetail(message=err.message, type=err.wire.openai_type, code=err.failure.value)
    if err.param is not None:
        detail.param = err.param
    return detail


def _logprob(value: float) -> float:
    return max(value, _MIN_LOGPROB)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs_pb(logprobs: Sequence[TokenLogprob]) -> pb.ChatLogprobs:
    return pb.ChatLogprobs(
        content=[
            pb.TokenLogprob(
                token=lp.token,
                logprob=_logprob(lp.logprob if lp.logprob is not None else _MIN_LOGPROB),
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
            out.top_logprobs.add().struct_value.update({t: _logprob(v) for t, v in lp.top})
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


def _assistant_message(choice: Choice) -> pb.ChatCompletionMessage:
    message = pb.ChatCompletionMessage(role="assistant")
    # OpenAI leaves content out (null) when the model only called tools.
    if choice.text or not choice.tool_calls:
        message.content = choice.text
    if choice.reasoning is not None:
        message.reasoning_content = choice.reasoning
    for call in choice.tool_calls:
        message.tool_calls.add(
            id=call.id, type="function", function=pb.FunctionCall(name=call.name, arguments=call.arguments)
        )
    return message


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


async def _relay(
    context: grpc.aio.ServicerContext,
    chunk_type: Any,
    envelope: dict[str, Any],
    record: CallRecord,
    chunks: AsyncGenerator[Any, None],
    events: bool,
) -> AsyncGenerator[Any, None]:
    """wire.stream with the chunk type's own error chunk (the completion id, once known)."""

    def error_chunk(err: ChatgenError) -> Any:
        gen = record.generation
        return chunk_type(id=gen.request_id if gen is not None else "", **envelope, error=error_pb(err))

    async with contextlib.aclosing(wire.stream(context, chunks, error_chunk, events, record)) as relay:
        async for chunk in relay:
            yield chunk


class _Streams:
    """A streaming RPC's two forms: typed chunks for gRPC callers, and the same chunks as Server-Sent Events
    (google.api.HttpBody) for the REST gateway. A subclass prepares its request (`_prepare`) and turns the
    generation's deltas into chunks (`_delta_chunks`); the rest is shared."""

    _gen: Generator
    _calls: CallLog
    _chunk_type: Any  # pb.ChatCompletionChunk or pb.CompletionChunk
    _object: str  # the chunks' `object`

    def _envelope(self) -> dict[str, Any]:
        """The fields every chunk of a stream shares but its id."""
        return {"object": self._object, "created": int(time.time()), "model": self._gen.model_name}

    async def _prepare(self, request: Any) -> Generation:
        raise NotImplementedError

    def _delta_chunks(
        self, request: Any, gen: Generation, events: sse.Events | None, envelope: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """The chunks of an admitted generation. With `events`, the deltas that carry only text (almost every
        token's) come as that event stream's HttpBody already, the rest as chunks."""
        raise NotImplementedError

    def _chunks(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        record: CallRecord,
        events: sse.Events | None,
        envelope: dict[str, Any],
    ) -> AsyncGenerator[Any, None]:
        """The stream's chunks, relayed: the request prepared, admitted, then its generation's chunks."""

        async def chunks() -> AsyncGenerator[Any, None]:
            gen = record.generation = await self._prepare(request)
            deltas = self._delta_chunks(request, gen, events, envelope)
            async with self._gen.admitted(gen), contextlib.aclosing(deltas) as admitted:
                async for chunk in admitted:
                    yield chunk

        return _relay(context, self._chunk_type, envelope, record, chunks(), events is not None)

    async def _typed(self, rpc: str, request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
        record = self._calls.begin(rpc, context, request.model)
        try:
            async with contextlib.aclosing(self._chunks(request, context, record, None, self._envelope())) as relay:
                async for chunk in relay:
                    yield chunk
        finally:
            self._calls.end(record)

    async def _events(
        self, rpc: str, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[httpbody_pb2.HttpBody, None]:
        record = self._calls.begin(rpc, context, request.model)
        try:
            envelope = self._envelope()
            events = sse.Events(self._chunk_type(**envelope))
            async with contextlib.aclosing(self._chunks(request, context, record, events, envelope)) as relay:
                async for chunk in relay:
                    yield chunk if isinstance(chunk, httpbody_pb2.HttpBody) else events.chunk(chunk)
            yield events.body(sse.DONE)
        finally:
            self._calls.end(record)


class ChatServicer(_Streams, pb_grpc.ChatServicer):
    _chunk_type = pb.ChatCompletionChunk
    _object = "chat.completion.chunk"

    def __init__(self, generator: Generator, calls: CallLog) -> None:
        self._gen = generator
        self._calls = calls

    async def CreateChatCompletion(
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChatCompletion:
        record = self._calls.begin("CreateChatCompletion", context, request.model)

        async def run() -> pb.ChatCompletion:
            gen = record.generation = await self._prepare(request)
            async with self._gen.admitted(gen):
                result = await self._gen.complete(gen)
            reply = pb.ChatCompletion(
                id=gen.request_id,
                object="chat.completion",
                created=int(time.time()),
                model=self._gen.model_name,
                usage=usage_pb(result.usage),
            )
            for c in result.choices:
                choice = reply.choices.add(index=c.index, message=_assistant_message(c), finish_reason=c.finish_reason)
                if c.logprobs is not None:
                    choice.logprobs.CopyFrom(chat_logprobs_pb(c.logprobs))
            return reply

        try:
            return await wire.unary(context, run, record)
        finally:
            self._calls.end(record)

    StreamChatCompletion = functools.partialmethod(_Streams._typed, "StreamChatCompletion")
    StreamChatCompletionEvents = functools.partialmethod(_Streams._events, "StreamChatCompletionEvents")

    async def _prepare(self, request: pb.ChatCompletionRequest) -> Generation:
        return await self._gen.prepare_chat(convert.chat_request(request))

    async def _delta_chunks(
        self, request: pb.ChatCompletionRequest, gen: Generation, events: sse.Events | None, envelope: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        for index in range(gen.n):
            first = pb.ChatCompletionDelta(role="assistant", content="")
            yield pb.ChatCompletionChunk(
                id=gen.request_id, **envelope, choices=[pb.ChatCompletionChunkChoice(index=index, delta=first)]
            )
        plain = events is not None and gen.options.logprobs is None
        async with contextlib.aclosing(self._gen.stream(gen)) as deltas:
            async for d in deltas:
                if plain and not (d.finish_reason or d.tool_calls) and (not d.text) != (not d.reasoning):
                    assert events is not None
                    field, text = ("content", d.text) if d.text else ("reasoning_content", d.reasoning)
                    yield events.text(gen.request_id, d.index, field, text)
                    continue
                choice = pb.ChatCompletionChunkChoice(index=d.index, delta=pb.ChatCompletionDelta())
                if d.reasoning:
                    choice.delta.reasoning_content = d.reasoning
                if d.text:
                    choice.delta.content = d.text
                for call in d.tool_calls:
                    choice.delta.tool_calls.append(_tool_call_delta_pb(call))
                if d.finish_reason:
                    choice.finish_reason = d.finish_reason
                if gen.options.logprobs is not None:
                    choice.logprobs.CopyFrom(chat_logprobs_pb(d.logprobs))
                yield pb.ChatCompletionChunk(id=gen.request_id, **envelope, choices=[choice])
        if convert.include_usage(request):
            yield pb.ChatCompletionChunk(id=gen.request_id, **envelope, usage=usage_pb(gen.usage))


class GenerateServicer(_Streams, pb_grpc.GenerateServicer):
    _chunk_type = pb.CompletionChunk
    _object = "text_completion"

    def __init__(self, generator: Generator, calls: CallLog) -> None:
        self._gen = generator
        self._calls = calls

    async def CreateCompletion(self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext) -> pb.Completion:
        record = self._calls.begin("CreateCompletion", context, request.model)

        async def run() -> pb.Completion:
            gen = record.generation = await self._prepare(request)
            async with self._gen.admitted(gen):
                result = await self._gen.complete(gen)
            reply = pb.Completion(
                id=gen.request_id,
                object="text_completion",
                created=int(time.time()),
                model=self._gen.model_name,
                usage=usage_pb(result.usage),
            )
            for c in result.choices:
                choice = reply.choices.add(index=c.index, text=c.text, finish_reason=c.finish_reason)
                if c.logprobs is not None:
                    # With echo the prompt's own tokens lead (from offset 0); without, the text is the completion.
                    choice.logprobs.CopyFrom(completion_logprobs_pb((*c.prompt_logprobs, *c.logprobs), 0))
            return reply

        try:
            return await wire.unary(context, run, record)
        finally:
            self._calls.end(record)

    StreamCompletion = functools.partialmethod(_Streams._typed, "StreamCompletion")
    StreamCompletionEvents = functools.partialmethod(_Streams._events, "StreamCompletionEvents")

    async def _prepare(self, request: pb.CompletionRequest) -> Generation:
        return await self._gen.prepare_completion(convert.completion_request(request))

    async def _delta_chunks(
        self, request: pb.CompletionRequest, gen: Generation, events: sse.Events | None, envelope: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        offsets = [0] * gen.n  # characters of each choice's text sent so far
        plain = events is not None and gen.options.logprobs is None
        async with contextlib.aclosing(self._gen.stream(gen)) as deltas:
            async for d in deltas:
                if plain and not d.finish_reason:
                    assert events is not None
                    yield events.text(gen.request_id, d.index, "text", d.text)
                    continue
                choice = pb.CompletionChunkChoice(index=d.index, text=d.text)
                if d.finish_reason:
                    choice.finish_reason = d.finish_reason
                if gen.options.logprobs is not None:
                    entries = (*d.prompt_logprobs, *d.logprobs)
                    choice.logprobs.CopyFrom(completion_logprobs_pb(entries, offsets[d.index]))
                offsets[d.index] += len(d.text)
                yield pb.CompletionChunk(id=gen.request_id, **envelope, choices=[choice])
        if convert.include_usage(request):
            yield pb.CompletionChunk(id=gen.request_id, **envelope, usage=usage_pb(gen.usage))


def model_pb(info: ModelInfo, abilities: list[str]) -> pb.Model:
    return pb.Model(
        id=info.name,
        object="model",
        created=info.created,
        owned_by="chatgen",
        max_model_len=info.max_model_len,
        model_type="LLM",
        model_ability=abilities,
    )


class ModelsServicer(pb_grpc.ModelsServicer):
    def __init__(self, models: list[tuple[ModelInfo, list[str]]]) -> None:
        self._models = {info.name: model_pb(info, abilities) for info, abilities in models}

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ModelList:
        return pb.ModelList(object="list", data=list(self._models.values()))

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        async def run() -> pb.Model:
            model = self._models.get(request.id)
            if model is None:
                raise ChatgenError(Failure.MODEL_NOT_FOUND, f"The model '{request.id}' does not exist", "model")
            return model

        return await wire.unary(context, run)
