"""Blocking client for the chatgen gRPC API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc

from chatgen.client import convert
from chatgen.client.convert import Metadata
from chatgen.client.types import ChatChunk, ChatResult, CompletionChunk, CompletionResult, ModelCard
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


class ChatgenClient:
    """`ChatgenClient("host:50051")`; `model=None` uses the server's (only or first) model.

    Every call takes `timeout` (seconds; the gRPC deadline) and `metadata` (sent along, e.g. x-request-id), and
    any request field of the contract as a keyword argument (`temperature=0`, `stop=["\\n"]`, ...).
    """

    def __init__(
        self,
        target: str,
        *,
        model: str | None = None,
        timeout: float | None = 60.0,
        metadata: Metadata | None = None,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        # credentials: TLS, e.g. grpc.ssl_channel_credentials(root_certificates=...) for a server run with --tls-cert.
        if channel is None:
            channel = (
                grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
            )
        self._channel = channel
        self._chat = pb_grpc.ChatServiceStub(self._channel)
        self._generate = pb_grpc.GenerateServiceStub(self._channel)
        self._models = pb_grpc.ModelsServiceStub(self._channel)
        self._model = model
        self._timeout = timeout
        self._metadata = list(metadata or ())

    def __enter__(self) -> ChatgenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None, metadata: Metadata | None) -> Any:
        try:
            return method(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=convert.merge_metadata(self._metadata, metadata),
            )
        except grpc.RpcError as exc:
            raise convert.error(exc) from None

    def _stream(self, method: Any, request: Any, timeout: float | None, metadata: Metadata | None) -> Iterator[Any]:
        call = self._call(method, request, timeout, metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise convert.error(exc) from None
        finally:
            call.cancel()  # a consumer that stops early cancels the call, which aborts generation server-side

    def model_name(self) -> str:
        if self._model is None:
            cards = self.models()
            if not cards:
                raise LookupError("the server lists no models")
            self._model = cards[0].id
        return self._model

    def models(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> list[ModelCard]:
        return convert.model_cards(self._call(self._models.ListModels, pb.ListModelsRequest(), timeout, metadata))

    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> ChatResult:
        request = convert.chat_request(model or self.model_name(), messages, params)
        return convert.chat_result(self._call(self._chat.CreateChatCompletion, request, timeout, metadata))

    def chat_stream(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> Iterator[ChatChunk]:
        request = convert.chat_request(model or self.model_name(), messages, params)
        for chunk in self._stream(self._chat.StreamChatCompletion, request, timeout, metadata):
            yield convert.chat_chunk(chunk)

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> CompletionResult:
        request = convert.completion_request(model or self.model_name(), prompt, params)
        return convert.completion_result(self._call(self._generate.CreateCompletion, request, timeout, metadata))

    def generate_stream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **params: Any,
    ) -> Iterator[CompletionChunk]:
        request = convert.completion_request(model or self.model_name(), prompt, params)
        for chunk in self._stream(self._generate.StreamCompletion, request, timeout, metadata):
            yield convert.completion_chunk(chunk)
