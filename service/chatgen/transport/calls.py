"""One record per chat or completion call: its request id, status, tokens and latencies, for the metrics and for
one structured log line.

The request id is the caller's `x-request-id` (REST callers get one from Envoy, which makes one up when the caller
sent none and returns it on the response), else a new one; it comes back to gRPC callers in the response headers
(initial metadata) of a unary call that succeeds, and in the trailers of a stream or of a call that fails.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc

from chatgen.chat.generation import Generation
from chatgen.metrics import Metrics

REQUEST_ID_KEY = "x-request-id"
# Longer or odd request ids are replaced, not echoed: they end up in logs and headers.
_MAX_REQUEST_ID = 128

log = logging.getLogger("chatgen.requests")


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            if value.isascii() and value.isprintable():
                return value
    return uuid.uuid4().hex


@dataclass
class CallRecord:
    rpc: str
    request_id: str
    model: str
    started: float = field(default_factory=time.perf_counter)
    # Set once the request is prepared (it has passed validation).
    generation: Generation | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    # Whether the request id has gone back in a unary call's response headers (the trailers carry it otherwise).
    id_sent: bool = False

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_KEY, self.request_id),)


class CallLog:
    """Starts and finishes call records: metrics for every call, and one JSON log line each unless turned off."""

    def __init__(self, metrics: Metrics | None, log_requests: bool = True) -> None:
        self._metrics = metrics
        self._log_requests = log_requests

    def begin(self, rpc: str, context: grpc.aio.ServicerContext, model: str) -> CallRecord:
        return CallRecord(rpc, request_id_from(context), model)

    def end(self, call: CallRecord) -> None:
        seconds = time.perf_counter() - call.started
        gen = call.generation
        ttft = gen.first_token_at - call.started if gen is not None and gen.first_token_at is not None else None
        prompt_tokens = len(gen.prompt_token_ids) if gen is not None else 0
        completion_tokens = gen.completion_tokens if gen is not None else 0
        if self._metrics is not None:
            self._metrics.call_finished(call.rpc, call.code, seconds, ttft, prompt_tokens, completion_tokens)
        if self._log_requests and log.isEnabledFor(logging.INFO):
            line = {
                "request_id": call.request_id,
                "id": gen.request_id if gen is not None else None,
                "rpc": call.rpc,
                "model": call.model,
                "status": call.code.name,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "n": gen.n if gen is not None else None,
                "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                "e2e_ms": round(seconds * 1000, 1),
            }
            log.info("%s", json.dumps(line, ensure_ascii=False))
