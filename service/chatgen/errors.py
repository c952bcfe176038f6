"""Request failures and how each one looks on the wire.

Every failure the service reports is an `ApiError` with a `Failure` kind (the client package has its own
`chatgen.client.ChatgenError`, what callers catch). `FAILURES` maps a kind to its gRPC
status, its HTTP status (the one Envoy's transcoder derives from that gRPC status, or the one Envoy answers with
itself) and the OpenAI error `type`; the kind's value is the OpenAI error `code`. `CASES` lists every bad input
and fault the service answers, with its kind: docs/api.md's error table is `python -m chatgen.errors`, and the
gateway's own replies (`GATEWAY_REPLIES`) come from the same table, so REST, gRPC and the docs cannot drift apart.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import grpc


class Failure(enum.Enum):
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UNSUPPORTED = "unsupported_parameter"
    MODEL_NOT_FOUND = "model_not_found"
    RESPONSE_NOT_FOUND = "response_not_found"
    ADAPTER_NOT_FOUND = "adapter_not_found"
    NO_CHAT_TEMPLATE = "no_chat_template"
    REQUEST_TOO_LARGE = "request_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    INVALID_API_KEY = "invalid_api_key"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SHUTTING_DOWN = "shutting_down"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True)
class FailureStatus:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str
    # Anthropic's error `type` for the same failure (the Messages API's errors).
    anthropic_type: str = "invalid_request_error"


_INVALID = "invalid_request_error"
_UNAVAILABLE = "service_unavailable_error"
# Anthropic's type for a service that cannot take the request now (its SDK retries these, as it does 529).
_OVERLOADED = "overloaded_error"

FAILURES: dict[Failure, FailureStatus] = {
    Failure.INVALID_REQUEST: FailureStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, _INVALID),
    # OpenAI's own code for a prompt (plus max_tokens) beyond the model's context.
    Failure.CONTEXT_LENGTH_EXCEEDED: FailureStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, _INVALID),
    # A well-formed request for something this deployment cannot do. Not UNIMPLEMENTED: Envoy maps that to 501,
    # and a client's request must never be a 5xx.
    Failure.UNSUPPORTED: FailureStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, _INVALID),
    Failure.MODEL_NOT_FOUND: FailureStatus(grpc.StatusCode.NOT_FOUND, 404, "not_found_error", "not_found_error"),
    # A Responses API id that is not stored (or is another API key's).
    Failure.RESPONSE_NOT_FOUND: FailureStatus(grpc.StatusCode.NOT_FOUND, 404, _INVALID, "not_found_error"),
    # A LoRA adapter name not loaded, or a load path with no adapter (vLLM answers both 404 NotFoundError).
    Failure.ADAPTER_NOT_FOUND: FailureStatus(grpc.StatusCode.NOT_FOUND, 404, "not_found_error", "not_found_error"),
    Failure.NO_CHAT_TEMPLATE: FailureStatus(grpc.StatusCode.FAILED_PRECONDITION, 400, _INVALID),
    # gRPC itself answers a message over the receive limit; Envoy answers a body over its buffer limit.
    Failure.REQUEST_TOO_LARGE: FailureStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, _INVALID, "request_too_large"),
    # Envoy's answer to request headers over its limit (gRPC itself limits a gRPC caller's metadata).
    Failure.HEADERS_TOO_LARGE: FailureStatus(grpc.StatusCode.INVALID_ARGUMENT, 431, _INVALID),
    # A REST body the gateway will not read as JSON; REST only (a gRPC caller's messages are protobuf).
    Failure.UNSUPPORTED_MEDIA_TYPE: FailureStatus(grpc.StatusCode.INVALID_ARGUMENT, 415, _INVALID),
    Failure.NOT_FOUND: FailureStatus(grpc.StatusCode.UNIMPLEMENTED, 404, "not_found_error", "not_found_error"),
    Failure.INVALID_API_KEY: FailureStatus(
        grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error", "authentication_error"
    ),
    Failure.OVERLOADED: FailureStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error", "rate_limit_error"),
    Failure.DEADLINE_EXCEEDED: FailureStatus(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error", "timeout_error"),
    Failure.SHUTTING_DOWN: FailureStatus(grpc.StatusCode.UNAVAILABLE, 503, _UNAVAILABLE, _OVERLOADED),
    Failure.ENGINE_UNAVAILABLE: FailureStatus(grpc.StatusCode.UNAVAILABLE, 503, _UNAVAILABLE, _OVERLOADED),
    Failure.UNAVAILABLE: FailureStatus(grpc.StatusCode.UNAVAILABLE, 503, _UNAVAILABLE, _OVERLOADED),
    Failure.INTERNAL: FailureStatus(grpc.StatusCode.INTERNAL, 500, "server_error", "api_error"),
}


@dataclass(frozen=True)
class ErrorCase:
    """One row of the error table: a bad input or a fault, who answers it, and how."""

    id: str
    what: str
    failure: Failure
    # The `param` values the error names, comma-separated ("" when it names none).
    param: str
    # Who produces the error: the chatgen server, Envoy (REST only), or gRPC itself (before chatgen's code runs).
    by: str = "server"


CASES: tuple[ErrorCase, ...] = (
    ErrorCase(
        "malformed-body",
        "a REST body that is not a JSON object; gRPC bytes that are not a protobuf message",
        Failure.INVALID_REQUEST,
        "",
        "Envoy / server",
    ),
    ErrorCase(
        "wrong-type",
        'a field of the wrong JSON type (`"temperature": "hot"`, `"max_tokens": "3"`, `"stream": "yes"`, '
        '`"messages": {…}`)',
        Failure.INVALID_REQUEST,
        "temperature, messages, …",
        "Envoy",
    ),
    ErrorCase("no-model", "`model` missing", Failure.INVALID_REQUEST, "model"),
    ErrorCase("unknown-model", "unknown `model`", Failure.MODEL_NOT_FOUND, "model"),
    ErrorCase(
        "empty-messages",
        "`messages` missing or empty; `prompt` missing or empty",
        Failure.INVALID_REQUEST,
        "messages, prompt",
    ),
    ErrorCase(
        "bad-role", "a message role other than system/user/assistant/tool", Failure.INVALID_REQUEST, "messages[0].role"
    ),
    ErrorCase(
        "bad-content",
        "content missing, or not a string or text parts; `stop` not strings; a tool message without `tool_call_id`",
        Failure.INVALID_REQUEST,
        "messages[0].content, messages[0].content[0], stop, …",
    ),
    ErrorCase(
        "out-of-range",
        "out-of-range sampling value (`temperature` > 2, `top_p` 0, `n` 0, `max_tokens` 0, `logit_bias` > 100, …)",
        Failure.INVALID_REQUEST,
        "temperature, top_p, n, max_tokens, …",
    ),
    ErrorCase(
        "bad-tools",
        "malformed `tools`, `tool_choice` or `response_format`; a decoding schema past its bounds (enum values, "
        "lengths, pattern repetitions, nesting: see Request fields)",
        Failure.INVALID_REQUEST,
        "tools[0], tool_choice, response_format.json_schema.schema, tools[0].function.parameters",
    ),
    ErrorCase(
        "prompt-too-long", "prompt longer than the model's context", Failure.CONTEXT_LENGTH_EXCEEDED, "messages, prompt"
    ),
    ErrorCase(
        "max-tokens-over",
        "prompt + `max_tokens` over the model's context",
        Failure.CONTEXT_LENGTH_EXCEEDED,
        "max_tokens",
    ),
    ErrorCase(
        "unsupported",
        "a feature this deployment lacks (`tools` without a tool-call parser, `logprobs` on the hf engine, "
        "a forced `tool_choice` with `response_format`, `n` above `--max-running`)",
        Failure.UNSUPPORTED,
        "tools, logprobs, response_format, n",
    ),
    ErrorCase(
        "unknown-response",
        "a Responses API id (`previous_response_id`, GET/DELETE `/v1/responses/{id}`) not stored, expired, deleted or "
        "another API key's",
        Failure.RESPONSE_NOT_FOUND,
        "previous_response_id",
    ),
    ErrorCase(
        "unknown-adapter",
        "`/v1/unload_lora_adapter` of a name not loaded; `/v1/load_lora_adapter` of a path with no adapter",
        Failure.ADAPTER_NOT_FOUND,
        "lora_name, lora_path",
    ),
    ErrorCase(
        "bad-adapter",
        "an adapter the engine cannot load (rank over `--max-lora-rank`, DoRA, bias, unreadable config), a name "
        "already loaded or the base model's, LoRA off (no `--enable-lora`)",
        Failure.INVALID_REQUEST,
        "lora_path, lora_name",
    ),
    ErrorCase(
        "adapter-updates-off",
        "`/v1/load_lora_adapter` or `/v1/unload_lora_adapter` with `--frontends` above 1 (each frontend keeps its "
        "own names: adapters are named at start with `--lora-modules`)",
        Failure.UNSUPPORTED,
        "lora_name",
    ),
    ErrorCase("no-chat-template", "chat on a model without a chat template", Failure.NO_CHAT_TEMPLATE, "messages"),
    ErrorCase(
        "too-large", "body over `--max-request-bytes` (default 8 MiB)", Failure.REQUEST_TOO_LARGE, "", "Envoy / gRPC"
    ),
    ErrorCase(
        "headers-too-large",
        "request headers over 16 KiB in all (a huge `authorization` or custom header)",
        Failure.HEADERS_TOO_LARGE,
        "",
        "Envoy",
    ),
    ErrorCase(
        "bad-media-type",
        "a REST body whose `Content-Type` is not `application/json` (none is read as JSON); gRPC on the REST port",
        Failure.UNSUPPORTED_MEDIA_TYPE,
        "",
        "Envoy",
    ),
    ErrorCase(
        "bad-timeout",
        "`x-request-timeout-ms` not a whole number of milliseconds (0: no deadline)",
        Failure.INVALID_REQUEST,
        "x-request-timeout-ms",
        "Envoy",
    ),
    ErrorCase("unknown-path", "unknown REST path / gRPC method", Failure.NOT_FOUND, "", "Envoy / gRPC"),
    ErrorCase(
        "bad-key", "missing or wrong API key (when keys are configured)", Failure.INVALID_API_KEY, "authorization"
    ),
    ErrorCase(
        "overloaded",
        "admission queue full (`--max-running` + `--max-waiting`); also sends `Retry-After`",
        Failure.OVERLOADED,
        "",
    ),
    ErrorCase(
        "deadline",
        "deadline passed (gRPC deadline, REST `x-request-timeout-ms`)",
        Failure.DEADLINE_EXCEEDED,
        "",
        "server / gRPC",
    ),
    ErrorCase(
        "slow-reader",
        "a gRPC caller read nothing for `--write-timeout` seconds (its flow-control window full)",
        Failure.DEADLINE_EXCEEDED,
        "",
        "server / gRPC",
    ),
    ErrorCase(
        "draining",
        "server draining after SIGTERM; also calls still running when the grace period ends",
        Failure.SHUTTING_DOWN,
        "",
    ),
    ErrorCase("engine-down", "engine died", Failure.ENGINE_UNAVAILABLE, ""),
    ErrorCase("server-unreachable", "gateway cannot reach the gRPC server", Failure.UNAVAILABLE, "", "Envoy"),
    ErrorCase("internal", "a bug (never expected; logged with a traceback)", Failure.INTERNAL, ""),
)

# Envoy's own error replies (local replies, and gRPC errors that carry no chatgen error body) by HTTP status.
GATEWAY_REPLIES: dict[int, Failure] = {
    400: Failure.INVALID_REQUEST,
    401: Failure.INVALID_API_KEY,
    404: Failure.NOT_FOUND,
    413: Failure.REQUEST_TOO_LARGE,
    431: Failure.HEADERS_TOO_LARGE,
    429: Failure.OVERLOADED,
    500: Failure.INTERNAL,
    503: Failure.UNAVAILABLE,
    504: Failure.DEADLINE_EXCEEDED,
}


def markdown_table() -> str:
    """docs/api.md's error table."""
    rows = [
        "| failure | answered by | gRPC status | HTTP | OpenAI `type` | `code` | `param` |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        shown = FAILURES[case.failure]
        param = ", ".join(p if p == "…" else f"`{p}`" for p in case.param.split(", ")) if case.param else "`null`"
        rows.append(
            f"| {case.what} | {case.by} | `{shown.grpc_code.name}` | {shown.http_status} | `{shown.openai_type}` "
            f"| `{case.failure.value}` | {param} |"
        )
    return "\n".join(rows) + "\n"


class ApiError(Exception):
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
    def status(self) -> FailureStatus:
        return FAILURES[self.failure]

    def openai_body(self) -> dict[str, dict[str, str | None]]:
        return openai_error(self.failure, self.message, self.param)

    def openai_json(self) -> str:
        # ASCII-only and single-line, so it can travel as gRPC metadata (see transport.status).
        return json.dumps(self.openai_body(), ensure_ascii=True, separators=(",", ":"))

    def anthropic_body(self) -> dict[str, object]:
        return anthropic_error(self.failure, self.message, self.param)

    def anthropic_json(self) -> str:
        return json.dumps(self.anthropic_body(), ensure_ascii=True, separators=(",", ":"))


def openai_error(failure: Failure, message: str, param: str | None = None) -> dict[str, dict[str, str | None]]:
    """OpenAI's error JSON, `{"error": {"message", "type", "param", "code"}}`: the one builder for the server's
    errors and the gateway's own replies. `code` carries the failure kind (OpenAI uses short snake_case codes)."""
    return {"error": {"message": message, "type": FAILURES[failure].openai_type, "param": param, "code": failure.value}}


def anthropic_error(failure: Failure, message: str, param: str | None = None) -> dict[str, object]:
    """Anthropic's error JSON, `{"type": "error", "error": {"type", "message"}}` (the Messages API's errors). It
    has no `param`: the field at fault leads the message, as Anthropic writes it (`max_tokens: Field required`),
    unless the message names it already; the gRPC status details carry both apart."""
    if param is not None and param.lower() not in message.lower():
        message = f"{param}: {message}"
    return {"type": "error", "error": {"type": FAILURES[failure].anthropic_type, "message": message}}


# How much of a client's value an error message quotes: messages travel in gRPC metadata (transport.status), which
# default clients cap at 8-16 KiB, and a client's value is the caller's own to know in full.
ECHO_CHARS = 64


def shown(value: object) -> str:
    """A client's value as an error message quotes it: its repr, of at most ECHO_CHARS of its characters."""
    text = str(value)
    return repr(text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "...")


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(Failure.INVALID_REQUEST, message, param)


def unsupported(message: str, param: str) -> ApiError:
    return ApiError(Failure.UNSUPPORTED, message, param)


def context_length_exceeded(message: str, param: str) -> ApiError:
    return ApiError(Failure.CONTEXT_LENGTH_EXCEEDED, message, param)


if __name__ == "__main__":
    print(markdown_table(), end="")
