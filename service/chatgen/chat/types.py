"""The service's own request and result types, independent of protobuf and of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling as the caller asked for it; None means "the default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    # Variables for the chat template, as the caller sent them (chat_template_kwargs).
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # The request-level thinking switch (Xinference's enable_thinking); None: not sent.
    enable_thinking: bool | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """Answer text and reasoning text added since the previous delta; `finish_reason` is set on the last one."""

    text: str
    finish_reason: str | None = None
    reasoning: str = ""


@dataclass(frozen=True)
class Result:
    text: str
    finish_reason: str
    usage: Usage
    # None when the model has no reasoning parser or produced no reasoning.
    reasoning: str | None = None
