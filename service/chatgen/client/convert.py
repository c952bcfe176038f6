"""Requests from keyword arguments and typed results from protobuf replies, shared by both clients.

Request fields are not re-declared here: keyword arguments are parsed onto the proto message by name, so every
field the contract has (temperature, stop, enable_thinking, ...) is accepted and anything else is a TypeError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from chatgen.client.types import (
    ChatChunk,
    ChatgenError,
    ChatResult,
    CompletionChunk,
    CompletionResult,
    ModelCard,
    Usage,
)
from chatgen.v1 import chatgen_pb2 as pb

Metadata = Iterable[tuple[str, str]]


def _parse(message: Any, fields: Mapping[str, Any]) -> Any:
    try:
        return json_format.ParseDict(fields, message)
    except json_format.ParseError as exc:
        raise TypeError(str(exc)) from exc


def chat_request(model: str, messages: Iterable[Mapping[str, Any]], params: Mapping[str, Any]) -> Any:
    return _parse(pb.CreateChatCompletionRequest(), {"model": model, "messages": list(messages), **params})


def completion_request(model: str, prompt: str, params: Mapping[str, Any]) -> Any:
    return _parse(pb.CreateCompletionRequest(), {"model": model, "prompt": prompt, **params})


def usage(u: Any) -> Usage:
    return Usage(u.prompt_tokens, u.completion_tokens, u.total_tokens)


def chat_result(reply: Any) -> ChatResult:
    choice = reply.choices[0]
    reasoning = choice.message.reasoning_content if choice.message.HasField("reasoning_content") else None
    return ChatResult(
        id=reply.id,
        model=reply.model,
        content=choice.message.content,
        finish_reason=choice.finish_reason,
        usage=usage(reply.usage),
        reasoning_content=reasoning,
    )


def chat_chunk(chunk: Any) -> ChatChunk:
    if not chunk.choices:
        return ChatChunk(id=chunk.id, usage=usage(chunk.usage) if chunk.HasField("usage") else None)
    c = chunk.choices[0]
    return ChatChunk(
        id=chunk.id,
        content=c.delta.content,
        reasoning_content=c.delta.reasoning_content,
        role=c.delta.role if c.delta.HasField("role") else None,
        finish_reason=c.finish_reason if c.HasField("finish_reason") else None,
    )


def completion_result(reply: Any) -> CompletionResult:
    c = reply.choices[0]
    return CompletionResult(reply.id, reply.model, c.text, c.finish_reason, usage(reply.usage))


def completion_chunk(chunk: Any) -> CompletionChunk:
    if not chunk.choices:
        return CompletionChunk(id=chunk.id, usage=usage(chunk.usage) if chunk.HasField("usage") else None)
    c = chunk.choices[0]
    return CompletionChunk(
        id=chunk.id, text=c.text, finish_reason=c.finish_reason if c.HasField("finish_reason") else None
    )


def model_cards(listing: Any) -> list[ModelCard]:
    return [ModelCard(m.id, m.max_model_len, list(m.model_ability)) for m in listing.data]


def error(exc: grpc.RpcError) -> ChatgenError:
    """The server's OpenAI error JSON (trailing metadata) when present, else the bare gRPC status."""
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    details: str = exc.details() or ""  # type: ignore[attr-defined]
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    raw = trailers.get("x-chatgen-error")
    if raw:
        body = json.loads(raw)["error"]
        return ChatgenError(code, body["message"], body.get("type"), body.get("param"))
    return ChatgenError(code, details)


def merge_metadata(default: Metadata | None, call: Metadata | None) -> list[tuple[str, str]] | None:
    merged = [*(default or ()), *(call or ())]
    return merged or None
