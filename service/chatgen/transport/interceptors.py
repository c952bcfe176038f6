"""The shape the transport's own interceptors share: wrap each method's handler once, so that every call of it
runs inside `around(...)` (what a grpc interceptor example does per call)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class AroundCalls(grpc.aio.ServerInterceptor):
    """Runs the calls of the methods under `prefixes` inside `around(method, request, context)` (`method` the full
    name, "/chatgen.v1.ChatService/CreateChatCompletion"); a subclass may also replace the request deserializer
    (`deserializer`)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def deserializer(self, handler: grpc.RpcMethodHandler) -> Callable[[bytes], Any] | None:
        return handler.request_deserializer  # type: ignore[no-any-return]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kwargs = {
            "request_deserializer": self.deserializer(handler),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary_inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self.around(method, request, context):
                    return await unary_inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream is not None:
            stream_inner = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # The handler's stream is closed here, inside around(): a caller that went away reaches it (and
                # what it relays) before around() ends the call, not whenever the garbage collector gets to it.
                async with (
                    self.around(method, request, context),
                    contextlib.aclosing(stream_inner(request, context)) as items,
                ):
                    async for item in items:
                        yield item

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler
