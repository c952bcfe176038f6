"""Optional API keys: `authorization: Bearer <key>` on every chatgen call (REST callers send the same header,
which Envoy passes on as gRPC metadata). Health checking and reflection stay open for probes and tools.
Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from chatgen.errors import ApiError, Failure
from chatgen.transport import status

PROTECTED_PREFIX = "/chatgen.v1."
ENV_VAR = "CHATGEN_API_KEYS"


def load_keys(cli_keys: Iterable[str], key_file: str | None) -> list[str]:
    """Keys from --api-key (repeatable), the CHATGEN_API_KEYS environment variable (comma-separated) and a key
    file (one per line, # comments); no keys at all means authentication is off."""
    keys = [k.strip() for k in cli_keys]
    keys += os.environ.get(ENV_VAR, "").split(",")
    if key_file:
        for line in Path(key_file).read_text().splitlines():
            keys.append(line.split("#", 1)[0])
    return sorted({k.strip() for k in keys if k.strip()})


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[len("bearer ") :].strip()
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def _allowed(self, presented: str | None) -> bool:
        if presented is None:
            return False
        token = presented.encode()
        # Compare against every key (no early exit), so timing does not tell which prefix matched.
        return any([hmac.compare_digest(token, key) for key in self._keys])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX):
            return handler
        if self._allowed(_bearer(details.invocation_metadata)):
            return handler
        return _rejecting(handler)


def _rejecting(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    err = ApiError(
        Failure.INVALID_API_KEY, "Missing or invalid API key: send 'Authorization: Bearer <key>'", "authorization"
    )

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await status.abort(context, err)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await status.abort(context, err)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
