"""Bytes that are not a valid protobuf message get INVALID_ARGUMENT with an OpenAI error, not grpc's UNKNOWN.

grpc calls the generated deserializer before any servicer code runs, and reports its exception as UNKNOWN ("a
server fault"). This interceptor swaps in a deserializer that catches the DecodeError and lets the handler answer
it as the caller's mistake. Wrapped handlers are built once per method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from chatgen.errors import invalid
from chatgen.transport import status


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MalformedMessageInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefix):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = _guarded(handler)
        return wrapped


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer

    def safe_deserialize(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError) as exc:
            return _Undecodable(str(exc))

    def error(request: _Undecodable) -> Any:
        return invalid(f"The request is not a valid protobuf message for this method: {request.reason}")

    kwargs = {"request_deserializer": safe_deserialize, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        unary_inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await status.abort(context, error(request))
            return await unary_inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        stream_inner = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await status.abort(context, error(request))
            async for item in stream_inner(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    return handler
