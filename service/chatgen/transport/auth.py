"""Optional API keys: `authorization: Bearer <key>` on every chatgen call (REST callers send the same header,
which Envoy passes on as gRPC metadata). Health checking and reflection stay open for probes and tools.
Keys are compared in constant time and never logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from chatgen.api_keys import allowed
from chatgen.errors import ApiError, Failure
from chatgen.transport import status

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/chatgen.v1."
# Probes and version checks need no key (as vLLM leaves /health and /version open).
OPEN_METHODS = frozenset(f"/chatgen.v1.ServingService/{name}" for name in ("GetVersion", "CheckHealthHttp", "PingHttp"))
# At most one log line per this many seconds about failed authentications (a flood of them must not flood the
# log); the metric counts every one.
LOG_EVERY_SECONDS = 10.0


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key a call presents: the bearer token of the `authorization` metadata ("" when that is not a bearer
    token), else the `x-api-key` metadata (how Anthropic's clients send a key); None when it has neither."""
    api_key = None
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return value[len("bearer ") :].strip() if value.lower().startswith("bearer ") else ""
        if key == "x-api-key" and isinstance(value, str):
            api_key = value.strip()
    return api_key


class FailedAuth:
    """Failed authentications by reason (`missing`: no authorization header; `malformed`: not a bearer token;
    `wrong`: a key that is not one of ours): counted each, logged at most once per LOG_EVERY_SECONDS with the
    count since the last line, the caller's address and the method; never any key material."""

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self._count = count
        self._since: dict[str, int] = {}
        self._logged_at = float("-inf")

    def __call__(self, reason: str, peer: str, method: str) -> None:
        if self._count is not None:
            self._count(reason)
        self._since[reason] = self._since.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(self._since.items()))
            log.warning(
                "failed authentication (%s since the last such line), latest from %s on %s", counts, peer, method
            )
            self._since.clear()
            self._logged_at = now


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: list[str], failed: FailedAuth | None = None) -> None:
        self._keys = [k.encode() for k in keys]
        self._failed = failed or FailedAuth()

    def _refusal(self, presented: str | None) -> str | None:
        """Why `presented` is refused; None: it is one of the keys."""
        if presented is None:
            return "missing"
        if not presented:
            return "malformed"
        return None if allowed(self._keys, presented) else "wrong"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PROTECTED_PREFIX) or details.method in OPEN_METHODS:
            return handler
        reason = self._refusal(presented_key(details.invocation_metadata))
        if reason is None:
            return handler
        anthropic = details.method.startswith(status.ANTHROPIC_SERVICE)
        return _rejecting(handler, lambda peer: self._failed(reason, peer, details.method), anthropic)


def _rejecting(handler: grpc.RpcMethodHandler, note: Callable[[str], None], anthropic: bool) -> grpc.RpcMethodHandler:
    err = ApiError(
        Failure.INVALID_API_KEY,
        "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
        "authorization",
    )

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        note(_peer(context))
        await status.abort(context, err, anthropic=anthropic)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        note(_peer(context))
        await status.abort(context, err, anthropic=anthropic)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


def _peer(context: grpc.aio.ServicerContext) -> str:
    """The caller: the gRPC peer (Envoy's address, for a REST call), and the x-forwarded-for header it came with,
    if any (as the client or a proxy before Envoy sent it: a claim, not a fact)."""
    peer = str(context.peer())[:64]
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for" and isinstance(value, str):
            return f"{peer} (x-forwarded-for {value[:64]!r})"
    return peer
