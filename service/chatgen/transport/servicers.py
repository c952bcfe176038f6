"""gRPC servicers for the Chat, Generate and Models services."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from chatgen.chat.generation import Generator
from chatgen.chat.types import Result, Usage
from chatgen.engine.base import ModelInfo
from chatgen.errors import ChatgenError, Failure
from chatgen.transport import convert
from chatgen.transport import errors as wire
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


def usage_pb(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)


def error_pb(err: ChatgenError) -> pb.ErrorDetail:
    detail = pb.ErrorDetail(message=err.message, type=err.wire.openai_type, code=err.failure.value)
    if err.param is not None:
        detail.param = err.param
    return detail


def _assistant_message(result: Result) -> pb.ChatCompletionMessage:
    message = pb.ChatCompletionMessage(role="assistant", content=result.text)
    if result.reasoning is not None:
        message.reasoning_content = result.reasoning
    return message


class ChatServicer(pb_grpc.ChatServicer):
    def __init__(self, generator: Generator) -> None:
        self._gen = generator

    async def CreateChatCompletion(
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChatCompletion:
        async def run() -> pb.ChatCompletion:
            gen = self._gen.prepare_chat(convert.chat_request(request))
            result: Result = await self._gen.complete(gen)
            return pb.ChatCompletion(
                id=gen.request_id,
                object="chat.completion",
                created=int(time.time()),
                model=self._gen.model_name,
                choices=[
                    pb.ChatCompletionChoice(
                        index=0,
                        message=_assistant_message(result),
                        finish_reason=result.finish_reason,
                    )
                ],
                usage=usage_pb(result.usage),
            )

        return await wire.unary(context, run)

    async def StreamChatCompletion(
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatCompletionChunk]:
        envelope = {"object": "chat.completion.chunk", "created": int(time.time()), "model": self._gen.model_name}
        ids: list[str] = []

        async def chunks() -> AsyncIterator[pb.ChatCompletionChunk]:
            gen = self._gen.prepare_chat(convert.chat_request(request))
            ids.append(gen.request_id)
            first = pb.ChatCompletionDelta(role="assistant", content="")
            yield pb.ChatCompletionChunk(
                id=gen.request_id, **envelope, choices=[pb.ChatCompletionChunkChoice(index=0, delta=first)]
            )
            async for d in self._gen.stream(gen):
                choice = pb.ChatCompletionChunkChoice(index=0, delta=pb.ChatCompletionDelta())
                if d.reasoning:
                    choice.delta.reasoning_content = d.reasoning
                if d.text:
                    choice.delta.content = d.text
                if d.finish_reason:
                    choice.finish_reason = d.finish_reason
                yield pb.ChatCompletionChunk(id=gen.request_id, **envelope, choices=[choice])
            if convert.include_usage(request):
                yield pb.ChatCompletionChunk(id=gen.request_id, **envelope, usage=usage_pb(gen.usage))

        def error_chunk(err: ChatgenError) -> pb.ChatCompletionChunk:
            return pb.ChatCompletionChunk(id=ids[0] if ids else "", **envelope, error=error_pb(err))

        def done_chunk() -> pb.ChatCompletionChunk:
            return pb.ChatCompletionChunk(object=wire.DONE_OBJECT)

        async with contextlib.aclosing(wire.stream(context, chunks(), error_chunk, done_chunk)) as relay:
            async for chunk in relay:
                yield chunk


class GenerateServicer(pb_grpc.GenerateServicer):
    def __init__(self, generator: Generator) -> None:
        self._gen = generator

    async def CreateCompletion(self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext) -> pb.Completion:
        async def run() -> pb.Completion:
            gen = self._gen.prepare_completion(convert.completion_request(request))
            result = await self._gen.complete(gen)
            return pb.Completion(
                id=gen.request_id,
                object="text_completion",
                created=int(time.time()),
                model=self._gen.model_name,
                choices=[pb.CompletionChoice(index=0, text=result.text, finish_reason=result.finish_reason)],
                usage=usage_pb(result.usage),
            )

        return await wire.unary(context, run)

    async def StreamCompletion(
        self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompletionChunk]:
        envelope = {"object": "text_completion", "created": int(time.time()), "model": self._gen.model_name}
        ids: list[str] = []

        async def chunks() -> AsyncIterator[pb.CompletionChunk]:
            gen = self._gen.prepare_completion(convert.completion_request(request))
            ids.append(gen.request_id)
            async for d in self._gen.stream(gen):
                choice = pb.CompletionChunkChoice(index=0, text=d.text)
                if d.finish_reason:
                    choice.finish_reason = d.finish_reason
                yield pb.CompletionChunk(id=gen.request_id, **envelope, choices=[choice])
            if convert.include_usage(request):
                yield pb.CompletionChunk(id=gen.request_id, **envelope, usage=usage_pb(gen.usage))

        def error_chunk(err: ChatgenError) -> pb.CompletionChunk:
            return pb.CompletionChunk(id=ids[0] if ids else "", **envelope, error=error_pb(err))

        def done_chunk() -> pb.CompletionChunk:
            return pb.CompletionChunk(object=wire.DONE_OBJECT)

        async with contextlib.aclosing(wire.stream(context, chunks(), error_chunk, done_chunk)) as relay:
            async for chunk in relay:
                yield chunk


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
