"""gRPC servicers for the Chat, Generate and Messages services. Each RPC is one call into the chat layer; the
servicers convert its results into reply messages (transport.replies, transport.messages) and its errors into
statuses (transport.status), nothing else. REST reaches the same RPCs through the gateway's transcoder."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc

from chatgen.chat.api import ChatApi
from chatgen.chat.types import StreamItem
from chatgen.transport import messages, replies, status
from chatgen.transport.messages import MessageEvents
from chatgen.transport.replies import ChatChunks, CompletionChunks
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

R = TypeVar("R", pb.CreateChatCompletionRequest, pb.CreateCompletionRequest)
Reply = pb.CreateChatCompletionResponse | pb.CreateCompletionResponse
# What turns a stream's items into its chunks (ChatChunks, CompletionChunks).
Chunks = Any


# The metadata the gateway sends with a REST stream (its Lua filter): the stream is written as Server-Sent Events,
# where an error after the first chunk can only travel as a chunk and the end needs a chunk of its own.
SSE_METADATA = ("x-chatgen-stream", "sse")


def from_gateway(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call is a REST stream, relayed by the gateway as Server-Sent Events."""
    return SSE_METADATA in (context.invocation_metadata() or ())


class GenerationServicer(Generic[R]):
    """What the Chat and Generate services share: each serves one generation API two ways (one reply, a typed
    stream), through its ChatApi calls and the same relaying; REST reaches both through the gateway's
    transcoder. A service names its request message, its chunks and its reply; its RPCs are these methods."""

    # ChatChunks or CompletionChunks: model -> what turns the stream's items into chunks.
    chunks_type: Callable[[str], Chunks]

    def __init__(self, api: ChatApi, write_timeout: float = 0.0) -> None:
        self._api = api
        self._write_timeout = write_timeout

    async def unary(self, request: R, context: grpc.aio.ServicerContext) -> Reply:
        return await status.unary(context, self._reply(request))

    async def stream(self, request: R, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The typed chunks; for the gateway (from_gateway), an error after the first chunk as a chunk, and an
        empty chunk at the end, which the gateway writes as `data: [DONE]`."""
        sse = from_gateway(context)
        chunks = self.chunks_type(request.model)
        relayed = status.stream(context, chunks.chunks(self._items(request)), chunks.error, sse, self._write_timeout)
        async with contextlib.aclosing(relayed):
            async for chunk in relayed:
                yield chunk
        if sse:
            yield chunks.chunk_type()

    async def _reply(self, request: R) -> Reply:
        raise NotImplementedError

    def _items(self, request: R) -> AsyncGenerator[StreamItem, None]:
        raise NotImplementedError


class ChatServicer(GenerationServicer[pb.CreateChatCompletionRequest], pb_grpc.ChatServiceServicer):
    chunks_type = ChatChunks
    CreateChatCompletion = GenerationServicer.unary
    StreamChatCompletion = GenerationServicer.stream

    async def _reply(self, request: pb.CreateChatCompletionRequest) -> pb.CreateChatCompletionResponse:
        return replies.chat_completion(await self._api.chat(request), request.model)

    def _items(self, request: pb.CreateChatCompletionRequest) -> AsyncGenerator[StreamItem, None]:
        return self._api.chat_stream(request)


class GenerateServicer(GenerationServicer[pb.CreateCompletionRequest], pb_grpc.GenerateServiceServicer):
    chunks_type = CompletionChunks
    CreateCompletion = GenerationServicer.unary
    StreamCompletion = GenerationServicer.stream

    async def _reply(self, request: pb.CreateCompletionRequest) -> pb.CreateCompletionResponse:
        return replies.completion(await self._api.complete(request), request.model)

    def _items(self, request: pb.CreateCompletionRequest) -> AsyncGenerator[StreamItem, None]:
        return self._api.complete_stream(request)


# Every generator relayed here is closed by the one relaying it (contextlib.aclosing), not left to the garbage
# collector: when the caller goes away, the close then reaches the engine (which aborts the request) and
# transport.status (which records the call as cancelled) before the call log ends the call.


class MessagesServicer(pb_grpc.MessagesServiceServicer):
    """The Anthropic Messages API: each call's errors are Anthropic's (transport.status.speak_anthropic)."""

    def __init__(self, api: ChatApi, write_timeout: float = 0.0) -> None:
        self._api = api
        self._model = api.served.name
        self._write_timeout = write_timeout

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        status.speak_anthropic()
        return await status.unary(context, self._reply(request))

    async def StreamMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMessageResponse]:
        status.speak_anthropic()
        events = MessageEvents(request.model)
        relayed = status.stream(
            context,
            events.chunks(self._api.message_stream(request)),
            events.error,
            from_gateway(context),
            self._write_timeout,
        )
        async with contextlib.aclosing(relayed):
            async for event in relayed:
                yield event

    async def CountMessageTokens(
        self, request: pb.CountMessageTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountMessageTokensResponse:
        status.speak_anthropic()
        return await status.unary(context, self._count(request))

    async def _reply(self, request: pb.CreateMessageRequest) -> pb.CreateMessageResponse:
        return messages.message_reply(await self._api.message(request), request.model)

    async def _count(self, request: pb.CountMessageTokensRequest) -> pb.CountMessageTokensResponse:
        return messages.count_reply(await self._api.count_message_tokens(request))
