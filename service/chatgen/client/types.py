"""Typed results of the chatgen Python client."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ChatResult:
    id: str
    model: str
    content: str
    finish_reason: str
    usage: Usage
    reasoning_content: str | None = None


@dataclass(frozen=True)
class ChatChunk:
    """One streamed chat delta. `usage` is set only on the final chunk when include_usage was asked for."""

    id: str
    content: str = ""
    reasoning_content: str = ""
    role: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class CompletionResult:
    id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class CompletionChunk:
    id: str
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class ModelCard:
    id: str
    max_model_len: int
    abilities: list[str] = field(default_factory=list)


class ChatgenError(Exception):
    """A failed call: the gRPC status plus the OpenAI-style error fields the server sent."""

    def __init__(self, code: grpc.StatusCode, message: str, type: str | None = None, param: str | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.type = type
        self.param = param
