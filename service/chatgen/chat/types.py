"""The chat layer's own message and result types, independent of protobuf. The engine's TokenLogprob and ModelInfo
are the chat layer's too (re-exported here), so that the transport imports no engine module."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from chatgen.engine.base import ModelInfo as ModelInfo
from chatgen.engine.base import TokenLogprob as TokenLogprob


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    # JSON text, as the model wrote it.
    arguments: str


def new_tool_call_id() -> str:
    """The one format of the tool-call ids the server makes up (vLLM's)."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


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
    # Assistant turns: the reasoning that came with the turn (templates may show it again).
    reasoning: str | None = None

    def openai_dict(self) -> dict[str, Any]:
        """The message in OpenAI's JSON shape (tool-call arguments as JSON text), as parsers and templates read it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning is not None:
            # Under both names: templates read reasoning_content (Qwen3, DeepSeek) or reasoning.
            out["reasoning_content"] = out["reasoning"] = self.reasoning
        return out


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
    # On the last delta, when a stop string ended the choice: which one.
    stop_sequence: str | None = None
    # With return_token_ids: the ids of the tokens this delta adds.
    token_ids: tuple[int, ...] = ()
    # With stream_options.continuous_usage_stats: the request's usage so far.
    usage: Usage | None = None


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
    # When a stop string ended the choice: which one.
    stop_sequence: str | None = None
    # With return_token_ids: the generated tokens' ids and the prompt's (None when not asked for).
    token_ids: tuple[int, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Result:
    """A unary call's answer. `id`: the completion id (chatcmpl-..., cmpl-...)."""

    id: str
    choices: list[Choice]
    usage: Usage
    # prompt_logprobs was asked for: each choice's prompt_logprobs go on the reply.
    scored_prompt: bool = False


@dataclass(frozen=True)
class StreamStart:
    """A stream's first item, once the request is admitted: what every chunk of it shares."""

    id: str
    n: int
    # Whether the deltas carry logprobs (the request asked for them).
    logprobs: bool
    # Tokens of the prompt as the model sees it.
    prompt_tokens: int = 0
    # With return_token_ids: each prompt's token ids (choice k answers prompt k // n); None when not asked for.
    prompts: tuple[tuple[int, ...], ...] | None = None


# What a stream yields: its StreamStart, the choices' Deltas as they come, then its Usage when it was asked for.
StreamItem = StreamStart | Delta | Usage


@dataclass(frozen=True)
class Tokens:
    """A prompt as the model sees it: its token ids, their texts (when asked for) and the model's context."""

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    max_model_len: int
