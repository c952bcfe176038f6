"""One record per chat or completion call: its request id, status, tokens and latencies, for the metrics and for
one structured log line, kept by an interceptor (as grpc's interceptor examples log) around every Chat and
Generate RPC.

The request id is the caller's `x-request-id` (REST callers get one from Envoy, which makes one up when the caller
sent none and returns it on the response), else a new one; it comes back to gRPC callers in the response headers
(initial metadata) of a unary call that succeeds, and in the trailers of a stream or of a call that fails. The
chat layer fills in the tokens and timings (chatgen.chat.accounting); transport.status sets the status. The
same metadata carries the server's load (transport.load_report), to gRPC and REST callers alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from chatgen.chat import accounting
from chatgen.chat.accounting import RequestStats
from chatgen.chat.validation.text import fits_request_id
from chatgen.metrics import Metrics
from chatgen.transport.interceptors import AroundCalls
from chatgen.transport.load_report import LoadReports

REQUEST_ID_KEY = "x-request-id"
# The most of a client's string a log line carries (json.dumps escapes it).
_MAX_LOGGED = 256
LOGGED_SERVICES = (
    "/chatgen.v1.ChatService/",
    "/chatgen.v1.GenerateService/",
    "/chatgen.v1.MessagesService/",
    "/chatgen.v1.ResponsesService/",
    "/chatgen.v1.TokenizerService/",
    # The probes (ServingService: /health, /ping, /version) are not logged.
)

log = logging.getLogger("chatgen.requests")


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        # Longer or odd request ids are replaced, not echoed: they end up in logs and headers.
        if key == REQUEST_ID_KEY and isinstance(value, str) and fits_request_id(value):
            return value
    return uuid.uuid4().hex


@dataclass
class CallRecord:
    rpc: str
    request_id: str
    stats: RequestStats = field(default_factory=RequestStats)
    code: grpc.StatusCode = grpc.StatusCode.OK
    # Whether the request id has gone back in a unary call's response headers (the trailers carry it otherwise).
    id_sent: bool = False
    # The server's load, reported with the call's metadata (None: not reported).
    load: LoadReports | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The request id, and the server's load as of now."""
        return ((REQUEST_ID_KEY, self.request_id), *self.load_metadata)

    @property
    def load_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (self.load.trailer(),) if self.load is not None else ()


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("chatgen_call", default=None)


def current_call() -> CallRecord | None:
    """The record of the RPC this code serves (None outside a logged RPC)."""
    return _current.get()


def bind_call(record: CallRecord | None) -> contextvars.Token[CallRecord | None]:
    """Make `record` the call record of this context, and its stats the chat layer's (chatgen.chat.accounting)."""
    if record is not None:
        accounting.bind(record.stats)
    return _current.set(record)


class CallLog:
    """Finishes call records: metrics for every call, and one JSON log line each unless turned off."""

    def __init__(self, metrics: Metrics | None, log_requests: bool = True, load: LoadReports | None = None) -> None:
        self._metrics = metrics
        self._log_requests = log_requests
        # Reported with every call's metadata (transport.load_report).
        self.load = load

    def end(self, call: CallRecord) -> None:
        if self.load is not None:
            self.load.call_ended(call.code == grpc.StatusCode.OK)
        seconds = time.perf_counter() - call.stats.started
        stats = call.stats
        ttft = stats.ttft
        if self._metrics is not None:
            self._metrics.call_finished(
                call.rpc, call.code, seconds, ttft, stats.prompt_tokens, stats.completion_tokens
            )
        if self._log_requests and log.isEnabledFor(logging.INFO):
            line = {
                "request_id": call.request_id,
                "id": stats.completion_id,
                "rpc": call.rpc,
                # The model as the caller sent it: an unknown one can be of any length.
                "model": stats.model[:_MAX_LOGGED] if stats.model is not None else None,
                "status": call.code.name,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "n": stats.n,
                "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                "e2e_ms": round(seconds * 1000, 1),
            }
            log.info("%s", json.dumps(line, ensure_ascii=False))


class CallLogInterceptor(AroundCalls):
    """Binds a CallRecord (and the chat layer's stats in it) around each Chat and Generate RPC, then logs it."""

    def __init__(self, calls: CallLog) -> None:
        super().__init__(LOGGED_SERVICES)
        self._calls = calls

    @contextlib.asynccontextmanager
    async def around(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        # Each RPC runs in a task of its own, whose context ends with it: nothing to reset afterwards (and a
        # stream finalized elsewhere could not reset it).
        record = CallRecord(method.rsplit("/", 1)[1], request_id_from(context), load=self._calls.load)
        bind_call(record)
        try:
            yield
        finally:
            self._calls.end(record)
