"""The engine interface: submit a tokenized request, stream its outputs, abort it by id.

Engines know tokens and sampling, nothing about chat messages or the wire protocol.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal


class EngineError(RuntimeError):
    """The engine failed (not the request): callers map it to UNAVAILABLE / HTTP 5xx."""


class EngineRejectedRequest(ValueError):
    """The engine refused this request as invalid (its own validation): callers map it to INVALID_ARGUMENT / 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Constraint:
    """What decoding is held to: a JSON schema, a regular expression, or a grammar (EBNF, or Lark as vLLM and
    xgrammar read it), as text."""

    kind: Literal["json", "regex", "ebnf", "lark"]
    text: str


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    # token id -> bias added to its logit (OpenAI's logit_bias, -100..100).
    logit_bias: tuple[tuple[int, float], ...] = ()
    # None: no logprobs; k >= 0: the chosen token's logprob plus the k most likely alternatives.
    logprobs: int | None = None
    skip_special_tokens: bool = True
    # What the output must satisfy, enforced while decoding; None: free text.
    constraint: Constraint | None = None
    # None: no prompt logprobs; k: each prompt token's logprob and its k most likely alternatives (echo).
    prompt_logprobs: int | None = None
    # EOS and stop tokens cannot end a choice before it has this many tokens.
    min_tokens: int = 0
    # Sampling picks only from these token ids; empty: from the whole vocabulary.
    allowed_token_ids: tuple[int, ...] = ()
    # Salts the prefix cache: requests share cached prompt blocks only under the same salt.
    cache_salt: str | None = None
    # With logprobs: each step's alternatives are these tokens (in this order), not the most likely ones.
    logprob_token_ids: tuple[int, ...] = ()
    # Lower runs earlier (vLLM's priority scheduling; 0 unless the engine schedules by priority).
    priority: int = 0
    # The engine may gather up to this many tokens into one output (vLLM's stream_interval; the first and the
    # last output are never held); an engine that cannot leaves it to the chat layer.
    stream_interval: int = 1


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at that step (most likely first)."""

    token: str
    # None only for a prompt's first token, which nothing precedes to score it.
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()
    # The token's id and its rank in the step's distribution (1: the most likely); the alternatives' ids, in the
    # order of `top` (their ranks are 1, 2, ...).
    token_id: int | None = None
    rank: int | None = None
    top_ids: tuple[int, ...] = ()


class AdapterNotFound(EngineRejectedRequest):
    """No adapter at the path a load names: callers map it to NOT_FOUND / 404, as vLLM does."""


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter over the served model: the name requests send as `model`, the engine's id for it (unique
    for the engine's life), and its directory."""

    name: str
    id: int
    path: str


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    # Run with this LoRA adapter over the model (None: the base model).
    adapter: Adapter | None = None


@dataclass(frozen=True)
class EngineOutput:
    """One step of a request: the text and token ids added since the previous output."""

    text: str
    token_ids: tuple[int, ...]
    # None while running; "stop" or "length" on the last output.
    finish_reason: str | None = None
    # One entry per token in token_ids when logprobs were asked for.
    logprobs: tuple[TokenLogprob, ...] = ()
    # On the first output only, when prompt logprobs were asked for: one per prompt token.
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    # With finish_reason "stop": the stop string that ended the text (None: EOS or a stop token).
    stop_sequence: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    max_model_len: int
    created: int


class Engine(abc.ABC):
    """A running model. `generate` is an async generator: closing or cancelling it aborts the request."""

    name: str
    # Whether generate() can report logprobs (SamplingOptions.logprobs).
    supports_logprobs: bool = False

    @property
    @abc.abstractmethod
    def model(self) -> ModelInfo: ...

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (chat template, encode/decode)."""

    @property
    def schedules_by_priority(self) -> bool:
        """Whether requests' `priority` orders the engine's queue (vLLM's --scheduling-policy priority)."""
        return False

    @property
    def max_adapters(self) -> int:
        """LoRA adapters the engine runs in one batch (vLLM's --max-loras); 0: it serves no adapters."""
        return 0

    @property
    def kv_cache_usage(self) -> float | None:
        """The share of the KV cache in use (0-1) at the engine's last step; None where the engine does not say."""
        return None

    async def load_adapter(self, adapter: Adapter, in_place: bool = False) -> None:
        """Load `adapter`'s weights, so requests can run it; EngineRejectedRequest when they do not load
        (AdapterNotFound: nothing at its path). `in_place`: new weights for an id already loaded."""
        raise EngineRejectedRequest("this engine does not serve LoRA adapters")

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]: ...

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abc.abstractmethod
    def num_running(self) -> int:
        """Requests submitted and not yet finished or aborted (0 when idle: proves aborts free the engine)."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise EngineError when the engine can no longer serve."""

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
