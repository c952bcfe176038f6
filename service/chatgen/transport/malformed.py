"""Bytes that are not a valid protobuf message get INVALID_ARGUMENT with the API's error JSON (Anthropic's for
MessagesService, OpenAI's otherwise), not grpc's UNKNOWN.

grpc calls the generated deserializer before any servicer code runs, and reports its exception as UNKNOWN ("a
server fault"). This interceptor swaps in a deserializer that catches the DecodeError and lets the handler answer
it as the caller's mistake. Wrapped handlers are built once per method.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from chatgen.errors import invalid
from chatgen.transport import status
from chatgen.transport.interceptors import AroundCalls


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MalformedMessageInterceptor(AroundCalls):
    def __init__(self, prefix: str) -> None:
        super().__init__((prefix,))

    def deserializer(self, handler: grpc.RpcMethodHandler) -> Callable[[bytes], Any]:
        deserialize = handler.request_deserializer

        def safe_deserialize(data: bytes) -> Any:
            try:
                return deserialize(data)
            except (DecodeError, ValueError) as exc:
                return _Undecodable(str(exc))

        return safe_deserialize

    @contextlib.asynccontextmanager
    async def around(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        if isinstance(request, _Undecodable):
            reason = request.reason
            # The servicer never runs to say which API's error shape the call speaks: the method does.
            await status.abort(
                context,
                invalid(f"The request is not a valid protobuf message for this method: {reason}"),
                anthropic=method.startswith(status.ANTHROPIC_SERVICE),
            )
        yield
