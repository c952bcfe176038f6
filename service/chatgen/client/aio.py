"""asyncio client for the chatgen gRPC API (same calls as ChatgenClient, awaited)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc

from chatgen.client import convert
from chatgen.client.convert import Metadata
from chatgen.client.types import ChatChunk, ChatResult, CompletionChunk, CompletionResult, ModelCard
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


class AsyncChatgenClient:
    """`async with AsyncChatgenClient("host:50051") as client: await client.chat([...])`."""

    def __init__(
        self,
        target: str,
        *,
        model: str | None = None,
        timeout: float | None = 60.0,
        metadata: Metadata | None = None,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        # credentials: TLS, e.g. grpc.ssl_channel_credentials(root_certificates=...) for a server run with --tls-cert.
        if channel is None:
            channel = (
                grpc.aio.secure_channel(target, credentials)
                if credentials is not None
                else grpc.aio.insecure_channel(target)
            )
        self._channel = channel
        self._chat = pb_grpc.ChatServiceStub(self._channel)
        self._generate = pb_grpc.GenerateServiceStub(self._channel)
        self._models = pb_grpc.ModelsServiceStub(self._channel)
        self._model = model
        self._timeout = timeout
        self._metadata = list(metadata or ())

    async def __aenter__(self) -> AsyncChatgenClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _kwargs(self, timeout: float | None, metadata: Metadata | None) -> dict[str, Any]:
        return {
            "timeout": self._timeout if timeout is None else timeout,
            "metadata": convert.merge_metadata(self._metadata, metadata),
        }

    async def _unary(self, method: Any, request: Any, timeout: float | None, metadata: Metadata | None) -> Any:
        try:
            return await method(request, **self._kwargs(timeout, metadata))
        except grpc.RpcError as exc:
            raise convert.error(exc) from None

    async def _stream(
        self, method: Any, request: Any, timeout: float | None, metadata: Metadata | None
    ) -> AsyncIterator[Any]:
        call = method(request, **self._kwargs(timeout, metadata))
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as exc:
            raise convert.error(exc) from None
        finally:
            call.cancel()

    async def model_name(self) -> str:
        if self._model is None:
            cards = await self.models()
            if not cards:
                raise LookupError("the server lists no models")
            self._model = cards[0].id
        return self._model

    async def models(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> list[ModelCard]:
        reply = await self._unary(self._models.ListModels, pb.ListModelsRequest(), timeout, metadata)
        return convert.model_cards(reply)

    async def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> ChatResult:
        request = convert.chat_request(model or await self.model_name(), messages, params)
        return convert.chat_result(await self._unary(self._chat.CreateChatCompletion, request, timeout, metadata))

    async def chat_stream(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> AsyncIterator[ChatChunk]:
        request = convert.chat_request(model or await self.model_name(), messages, params)
        async for chunk in self._stream(self._chat.StreamChatCompletion, request, timeout, metadata):
            yield convert.chat_chunk(chunk)

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> CompletionResult:
        request = convert.completion_request(model or await self.model_name(), prompt, params)
        reply = await self._unary(self._generate.CreateCompletion, request, timeout, metadata)
        return convert.completion_result(reply)

    async def generate_stream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> AsyncIterator[CompletionChunk]:
        request = convert.completion_request(model or await self.model_name(), prompt, params)
        async for chunk in self._stream(self._generate.StreamCompletion, request, timeout, metadata):
            yield convert.completion_chunk(chunk)
