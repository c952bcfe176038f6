"""The service's own request and result types, independent of protobuf and of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatgen.engine.base import TokenLogprob


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    # JSON text, as the model wrote it.
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of tool call `index`: its first piece has id and name, later ones add arguments text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None
    # Assistant turns: the calls it made; tool turns: the call answered.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


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
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()
    # OpenAI's logit_bias: token id -> bias in [-100, 100].
    logit_bias: tuple[tuple[int, float], ...] = ()
    # None: no logprobs; k: the chosen token's logprob and the k most likely alternatives.
    logprobs: int | None = None
    skip_special_tokens: bool = True
    # JSON Schema text the output must satisfy (response_format json_object / json_schema); None: free text.
    json_schema: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    # Variables for the chat template, as the caller sent them (chat_template_kwargs).
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # The request-level thinking switch (Xinference's enable_thinking); None: not sent.
    enable_thinking: bool | None = None
    # Caller-chosen id; the response id is built from it (vLLM's request_id extra).
    request_id: str | None = None
    # OpenAI tool definitions ({"type": "function", "function": {...}}) and tool_choice ("auto", "none",
    # "required", or "function" with the name in forced_function).
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | None = None
    forced_function: str | None = None
    # False: at most one tool call per turn.
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling = field(default_factory=Sampling)
    # Return the prompt in front of the completion.
    echo: bool = False
    request_id: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """What choice `index` added since its previous delta; `finish_reason` is set on its last one."""

    text: str
    finish_reason: str | None = None
    reasoning: str = ""
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()
    # Completions with echo and logprobs, on a choice's first delta: the prompt's tokens.
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str
    # None when the model has no reasoning parser or produced no reasoning.
    reasoning: str | None = None
    # Per generated token, when logprobs were asked for (None otherwise).
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Result:
    choices: list[Choice]
    usage: Usage
