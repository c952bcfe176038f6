"""Request failures and how each one looks on the wire.

Every failure the service reports is a `ChatgenError` with a `Failure` kind. `FAILURES` is the one table that
maps a kind to its gRPC status, its HTTP status (the one Envoy's transcoder derives from that gRPC status) and the
OpenAI error `type`; the README reproduces it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import grpc


class Failure(enum.Enum):
    INVALID_REQUEST = "invalid_request"
    MODEL_NOT_FOUND = "model_not_found"
    NO_CHAT_TEMPLATE = "no_chat_template"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    INVALID_API_KEY = "invalid_api_key"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


@dataclass(frozen=True)
class WireStatus:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str


FAILURES: dict[Failure, WireStatus] = {
    Failure.INVALID_REQUEST: WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Failure.MODEL_NOT_FOUND: WireStatus(grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    Failure.NO_CHAT_TEMPLATE: WireStatus(grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
    Failure.ENGINE_UNAVAILABLE: WireStatus(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
    Failure.INVALID_API_KEY: WireStatus(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    Failure.OVERLOADED: WireStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    Failure.SHUTTING_DOWN: WireStatus(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
    Failure.DEADLINE_EXCEEDED: WireStatus(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
    Failure.INTERNAL: WireStatus(grpc.StatusCode.INTERNAL, 500, "server_error"),
}


class ChatgenError(Exception):
    def __init__(
        self, failure: Failure, message: str, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.param = param
        # Seconds after which a retry may succeed (overload): HTTP Retry-After, gRPC retry pushback.
        self.retry_after = retry_after

    @property
    def wire(self) -> WireStatus:
        return FAILURES[self.failure]

    def openai_body(self) -> dict[str, dict[str, str | None]]:
        """OpenAI's error object; `code` carries our failure kind (OpenAI uses short snake_case codes too)."""
        return {
            "error": {
                "message": self.message,
                "type": self.wire.openai_type,
                "param": self.param,
                "code": self.failure.value,
            }
        }

    def openai_json(self) -> str:
        # ASCII-only and single-line, so it can travel as gRPC metadata (see transport.errors).
        return json.dumps(self.openai_body(), ensure_ascii=True, separators=(",", ":"))


def invalid(message: str, param: str | None = None) -> ChatgenError:
    return ChatgenError(Failure.INVALID_REQUEST, message, param)
