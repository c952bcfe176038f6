"""gRPC servicers for the Chat, Generate and Models services. Each RPC is one call into the chat layer; the
servicers convert its results into reply messages (transport.replies) and its errors into statuses
(transport.status), nothing else."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from google.api.httpbody_pb2 import HttpBody

from chatgen.chat.api import ChatApi
from chatgen.errors import ApiError, Failure
from chatgen.transport import replies, rest, sse, status
from chatgen.transport.replies import ChatChunks, CompletionChunks
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


def _json_body(reply: pb.CreateChatCompletionResponse | pb.CreateCompletionResponse) -> HttpBody:
    return HttpBody(content_type=rest.CONTENT_TYPE, data=rest.render(reply))


class ChatServicer(pb_grpc.ChatServiceServicer):
    def __init__(self, api: ChatApi) -> None:
        self._api = api
        self._model = api.served.name

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        return await status.unary(context, self._reply(request))

    async def StreamChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        chunks = ChatChunks(self._model, events=False)
        async for chunk in status.stream(context, chunks.chunks(self._api.chat_stream(request)), chunks.error, False):
            yield chunk

    async def CreateChatCompletionHttp(
        self, body: HttpBody, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[HttpBody]:
        chunks = ChatChunks(self._model, events=True)
        async for out in _rest_bodies(chunks, status.stream(context, self._rest(body, chunks), chunks.error, True)):
            yield out

    async def _rest(self, body: HttpBody, chunks: ChatChunks) -> AsyncGenerator[replies.Chunk, None]:
        request = rest.parse(body.data, pb.CreateChatCompletionRequest)
        if not request.stream:
            yield _json_body(await self._reply(request))
            return
        async for chunk in chunks.chunks(self._api.chat_stream(request)):
            yield chunk

    async def _reply(self, request: pb.CreateChatCompletionRequest) -> pb.CreateChatCompletionResponse:
        return replies.chat_completion(await self._api.chat(request), self._model)


class GenerateServicer(pb_grpc.GenerateServiceServicer):
    def __init__(self, api: ChatApi) -> None:
        self._api = api
        self._model = api.served.name

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        return await status.unary(context, self._reply(request))

    async def StreamCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        chunks = CompletionChunks(self._model, events=False)
        async for chunk in status.stream(
            context, chunks.chunks(self._api.complete_stream(request)), chunks.error, False
        ):
            yield chunk

    async def CreateCompletionHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> AsyncIterator[HttpBody]:
        chunks = CompletionChunks(self._model, events=True)
        async for out in _rest_bodies(chunks, status.stream(context, self._rest(body, chunks), chunks.error, True)):
            yield out

    async def _rest(self, body: HttpBody, chunks: CompletionChunks) -> AsyncGenerator[replies.Chunk, None]:
        request = rest.parse(body.data, pb.CreateCompletionRequest)
        if not request.stream:
            yield _json_body(await self._reply(request))
            return
        async for chunk in chunks.chunks(self._api.complete_stream(request)):
            yield chunk

    async def _reply(self, request: pb.CreateCompletionRequest) -> pb.CreateCompletionResponse:
        return replies.completion(await self._api.complete(request), self._model)


async def _rest_bodies(chunks: replies.StreamChunks, relayed: AsyncIterator[replies.Chunk]) -> AsyncIterator[HttpBody]:
    """A REST call's HttpBody messages: a unary reply's one JSON body, or a stream's chunks as events, then
    `[DONE]`."""
    events = chunks.events
    assert events is not None
    async for chunk in relayed:
        if not isinstance(chunk, HttpBody):
            yield events.chunk(chunk)
            continue
        yield chunk
        if chunk.content_type == rest.CONTENT_TYPE:
            return
    yield events.body(sse.DONE)


class ModelsServicer(pb_grpc.ModelsServiceServicer):
    def __init__(self, models: list[pb.Model]) -> None:
        self._models = {model.id: model for model in models}

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(object="list", data=list(self._models.values()))

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        return await status.unary(context, self._model(request.id))

    async def _model(self, model_id: str) -> pb.Model:
        model = self._models.get(model_id)
        if model is None:
            raise ApiError(Failure.MODEL_NOT_FOUND, f"The model '{model_id}' does not exist", "model")
        return model
