"""The fields chat and completion requests share: the model, sampling, `n`, stop, logit bias, structured output.

The engine's `SamplingOptions` is the one list of sampling fields: a request field of the same name (present on
both request messages, `optional` in the proto) is copied over when sent and keeps the engine's default when not,
after its range check here. `SamplingPlan.to_options` then needs only what depends on the prompt: `max_tokens`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chatgen.chat.coalescing import StreamInterval
from chatgen.chat.validation import values
from chatgen.chat.validation.schemas import Grammar
from chatgen.engine.base import Adapter, SamplingOptions
from chatgen.errors import ApiError, Failure, invalid, shown, unsupported
from chatgen.v1 import chatgen_pb2 as pb

# OpenAI's limits.
MAX_N = 16
MAX_TOP_LOGPROBS = 20
# vLLM's limits.
MAX_CACHE_SALT_CHARS = 128
MAX_LOGPROB_TOKEN_IDS = 128


@dataclass(frozen=True)
class ServedModel:
    """What this deployment serves and can do: the facts a request is checked against before it is rendered."""

    name: str
    engine: str
    # The engine reports logprobs.
    logprobs: bool = True
    # The model has a chat template (Chat works; Generate always does).
    chat_template: bool = True
    # A tool-call parser is configured: tool_choice "auto" can return tool calls.
    tool_parser: bool = False
    # Choices one request may run at once (admission's max_running), at most MAX_N.
    max_choices: int = MAX_N
    # Requests' `priority` orders the queues (vLLM's --scheduling-policy priority); otherwise it must be 0.
    priority_scheduling: bool = False
    # The LoRA adapters loaded over the model, by the name a request sends as `model` (a live view: adapters
    # load and unload while the server runs).
    adapters: Mapping[str, Adapter] = dataclasses.field(default_factory=dict)
    # How streams coalesce tokens into chunks (--stream-interval, --stream-interval-ms); requests may raise it.
    stream_interval: StreamInterval = dataclasses.field(default_factory=StreamInterval)


def _scalar_fields() -> tuple[str, ...]:
    """SamplingOptions fields that both request messages carry as `optional` scalars of the same name."""
    names = []
    for field in dataclasses.fields(SamplingOptions):
        on_both = [
            m.DESCRIPTOR.fields_by_name.get(field.name)
            for m in (pb.CreateChatCompletionRequest, pb.CreateCompletionRequest)
        ]
        if all(f is not None and f.has_presence and f.message_type is None for f in on_both):
            names.append(field.name)
    # max_tokens depends on the prompt and logprobs means different things in chat and completions; the stream
    # interval is the request's and the server's together (stream_interval()).
    return tuple(n for n in names if n not in ("max_tokens", "logprobs", "stream_interval"))


SCALAR_FIELDS = _scalar_fields()

# field -> (accepts the value, the error message); the engine would reject most of these too, but only once the
# request is queued and without naming the field.
RANGES: dict[str, tuple[Any, str]] = {
    "temperature": (lambda v: 0.0 <= v <= 2.0, "'temperature' must be between 0 and 2, got {}"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "'top_p' must be in (0, 1], got {}"),
    "top_k": (lambda v: v >= -1, "'top_k' must be -1, 0 (disabled) or positive, got {}"),
    "min_p": (lambda v: 0.0 <= v <= 1.0, "'min_p' must be between 0 and 1, got {}"),
    "presence_penalty": (lambda v: -2.0 <= v <= 2.0, "'presence_penalty' must be between -2 and 2, got {}"),
    "frequency_penalty": (lambda v: -2.0 <= v <= 2.0, "'frequency_penalty' must be between -2 and 2, got {}"),
    # vLLM only asks for > 0, but the penalty divides logits: near 0 they overflow to inf and sampling fails
    # (found by fuzzing with 1.4e-45). Useful values are around 1-2.
    "repetition_penalty": (lambda v: 0.01 <= v <= 100.0, "'repetition_penalty' must be between 0.01 and 100, got {}"),
    "min_tokens": (lambda v: v >= 0, "'min_tokens' must be 0 or more, got {}"),
    "prompt_logprobs": (
        lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
        f"'prompt_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {{}}",
    ),
    # vLLM's rule: the salt becomes part of cache keys and paths. The error does not quote it: it is a secret.
    "cache_salt": (
        lambda v: 1 <= len(v) <= MAX_CACHE_SALT_CHARS and not set(v) & set("@/\\"),
        f"'cache_salt' must be 1 to {MAX_CACHE_SALT_CHARS} characters, none of them '@', '/' or a backslash",
    ),
}


@dataclass(frozen=True)
class ReplyExtras:
    """What vLLM's extensions add to a reply, beside the text."""

    # return_token_ids: the prompt's and the choices' token ids.
    token_ids: bool = False
    # return_tokens_as_token_ids: logprobs name tokens "token_id:<id>".
    tokens_as_ids: bool = False
    # prompt_logprobs: the prompt's tokens scored, on the reply.
    prompt_logprobs: bool = False


def reply_extras(request: Any, streaming: bool) -> ReplyExtras:
    if request.HasField("prompt_logprobs") and streaming:
        raise invalid("'prompt_logprobs' are not available with 'stream': true", "prompt_logprobs")
    return ReplyExtras(
        request.return_token_ids, request.return_tokens_as_token_ids, request.HasField("prompt_logprobs")
    )


@dataclass(frozen=True)
class Truncation:
    """vLLM's truncate_prompt_tokens: the prompt is cut to `tokens` (-1: what the context leaves room for)."""

    tokens: int
    # "left" keeps the last tokens, "right" the first; None: the tokenizer's truncation_side.
    side: str | None

    def apply(self, ids: list[int], room: int, default_side: str) -> list[int]:
        """`ids` cut to the limit; `room`: the most prompt tokens the context allows (the -1 limit)."""
        limit = room if self.tokens == -1 else self.tokens
        if len(ids) <= limit:
            return ids
        return ids[-limit:] if (self.side or default_side) == "left" else ids[:limit]


@dataclass(frozen=True)
class SamplingPlan:
    """Validated sampling: everything the engine needs but `max_tokens` when the caller left it to the context."""

    n: int
    # None: as many as the context leaves room for once the prompt is known.
    max_tokens: int | None
    fields: dict[str, Any]
    # The constraint decoding is held to (also fields["constraint"]), with the request field it came from.
    grammar: Grammar | None = None
    # Cut each prompt before it runs (vLLM's truncate_prompt_tokens); None: a prompt over the context is an error.
    truncation: Truncation | None = None
    # The LoRA adapter the request's `model` names (None: the base model).
    adapter: Adapter | None = None
    # How a stream's tokens coalesce into chunks (the server's setting, raised by the request's).
    interval: StreamInterval = dataclasses.field(default_factory=StreamInterval)

    def to_options(self, room: int) -> SamplingOptions:
        """The engine's options, given the room the prompt leaves in the context."""
        max_tokens = self.max_tokens if self.max_tokens is not None else room
        return SamplingOptions(max_tokens=max_tokens, stream_interval=self.interval.engine_tokens, **self.fields)


def check_model(request: Any, model: ServedModel) -> None:
    if not request.model:
        raise invalid("'model' is required", "model")
    if request.model != model.name and request.model not in model.adapters:
        adapters = f" and its LoRA adapters ({', '.join(sorted(model.adapters))})" if model.adapters else ""
        raise ApiError(
            Failure.MODEL_NOT_FOUND,
            f"The model {shown(request.model)} does not exist; this server serves '{model.name}'{adapters}",
            "model",
        )


def check_stream_options(request: Any, streaming: bool) -> bool:
    """Whether a stream ends with a usage chunk. `stream`, where sent, must agree with the call (REST picks the
    call from it); stream_options belong to streams only, as OpenAI and vLLM have it."""
    if request.HasField("stream") and request.stream != streaming:
        rpc = "a streaming" if request.stream else "a unary"
        raise invalid(f"'stream' is {str(request.stream).lower()}, but this is not {rpc} call", "stream")
    if request.HasField("stream_options") and not streaming:
        raise invalid("'stream_options' is only allowed with 'stream': true", "stream_options")
    return streaming and bool(request.stream_options.include_usage)


def continuous_usage(request: Any, streaming: bool) -> bool:
    """vLLM's stream_options.continuous_usage_stats: every chunk carries the usage so far (with include_usage)."""
    return streaming and request.stream_options.include_usage and request.stream_options.continuous_usage_stats


def _max_tokens(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise invalid(f"'max_tokens' must be at least 1, got {value}", "max_tokens")
    return value


def _choices(request: Any, model: ServedModel) -> int:
    n = request.n if request.HasField("n") else 1
    if not 1 <= n <= MAX_N:
        raise invalid(f"'n' must be between 1 and {MAX_N}, got {n}", "n")
    if n > model.max_choices:
        raise unsupported(f"'n' is {n}, but this server runs at most {model.max_choices} choices at once", "n")
    return n


def check_logprobs(top: int | None, model: ServedModel, param: str) -> int | None:
    """Top logprobs per token (None: no logprobs) within OpenAI's limit and what the engine can do."""
    if top is None:
        return None
    if not model.logprobs:
        raise unsupported(f"the {model.engine} engine does not report logprobs", "logprobs")
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise invalid(f"'{param}' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", param)
    return top


def _named_logprobs(
    request: pb.CreateChatCompletionRequest | pb.CreateCompletionRequest, top: int | None
) -> tuple[int, ...]:
    """logprob_token_ids: the tokens each step's logprobs name instead of the most likely ones (vLLM's)."""
    named = _token_ids(request.logprob_token_ids, "logprob_token_ids")
    if not named:
        return ()
    if top is None:
        raise invalid("'logprob_token_ids' needs logprobs", "logprob_token_ids")
    if len(named) > MAX_LOGPROB_TOKEN_IDS:
        message = f"'logprob_token_ids' has {len(named)} ids; at most {MAX_LOGPROB_TOKEN_IDS} are allowed"
        raise invalid(message, "logprob_token_ids")
    if len(set(named)) != len(named):
        raise invalid("'logprob_token_ids' names a token more than once", "logprob_token_ids")
    if top not in (0, len(named)):
        # The alternatives are the named tokens: a different count of "most likely" ones cannot also be given.
        field = "top_logprobs" if isinstance(request, pb.CreateChatCompletionRequest) else "logprobs"
        raise invalid(f"'{field}' is {top}, but logprob_token_ids names {len(named)} tokens", field)
    return named


def sampling_plan(
    request: pb.CreateChatCompletionRequest | pb.CreateCompletionRequest,
    model: ServedModel,
    max_tokens: int | None,
    logprobs: int | None,
    grammar: Grammar | None,
) -> SamplingPlan:
    """The sampling a request asks for, every value checked; `logprobs` and `grammar` come checked already."""
    fields: dict[str, Any] = {}
    for name in SCALAR_FIELDS:
        if not request.HasField(name):
            continue
        value = getattr(request, name)
        check = RANGES.get(name)
        if check is not None and not check[0](value):
            raise invalid(check[1].format(value), name)
        fields[name] = value
    fields["stop"] = values.stop_strings(request.stop)
    fields["stop_token_ids"] = _token_ids(request.stop_token_ids, "stop_token_ids")
    fields["logit_bias"] = values.logit_bias(request.logit_bias)
    fields["allowed_token_ids"] = _token_ids(request.allowed_token_ids, "allowed_token_ids")
    if fields.get("priority", 0) and not model.priority_scheduling:
        # vLLM's rule: a priority the scheduler would not honour is refused, not ignored.
        raise invalid(
            f"'priority' is {fields['priority']}, but this server does not schedule by priority (start it on the "
            "vLLM engine with --scheduling-policy priority)",
            "priority",
        )
    fields["logprob_token_ids"] = _named_logprobs(request, logprobs)
    fields["logprobs"] = len(fields["logprob_token_ids"]) or logprobs
    fields["constraint"] = grammar.constraint if grammar is not None else None
    max_tokens = _max_tokens(max_tokens)
    if max_tokens is not None and fields.get("min_tokens", 0) > max_tokens:
        raise invalid(f"'min_tokens' ({fields['min_tokens']}) is more than 'max_tokens' ({max_tokens})", "min_tokens")
    return SamplingPlan(
        n=_choices(request, model),
        max_tokens=max_tokens,
        fields=fields,
        grammar=grammar,
        truncation=_truncation(request),
        # check_model found the name (base or adapter) already.
        adapter=model.adapters.get(request.model),
        interval=stream_interval(request, model),
    )


# The most a request may raise the stream interval to: a chunk per this many tokens / milliseconds.
MAX_STREAM_INTERVAL = 1024
MAX_STREAM_INTERVAL_MS = 60_000


def stream_interval(
    request: pb.CreateChatCompletionRequest | pb.CreateCompletionRequest, model: ServedModel
) -> StreamInterval:
    """The request's stream_interval (vLLM's) and stream_interval_ms (chatgen's) over the server's. Unary calls
    take them and ignore them, as vLLM does."""
    tokens = request.stream_interval if request.HasField("stream_interval") else None
    if tokens is not None and not 1 <= tokens <= MAX_STREAM_INTERVAL:
        raise invalid(f"'stream_interval' must be between 1 and {MAX_STREAM_INTERVAL}, got {tokens}", "stream_interval")
    ms = request.stream_interval_ms if request.HasField("stream_interval_ms") else None
    if ms is not None and not 0 <= ms <= MAX_STREAM_INTERVAL_MS:
        raise invalid(
            f"'stream_interval_ms' must be between 0 and {MAX_STREAM_INTERVAL_MS}, got {ms}", "stream_interval_ms"
        )
    return model.stream_interval.raised_by(tokens, ms)


def _truncation(request: pb.CreateChatCompletionRequest | pb.CreateCompletionRequest) -> Truncation | None:
    side = request.truncation_side if request.HasField("truncation_side") else None
    if side not in (None, "left", "right"):
        raise invalid(f"'truncation_side' must be 'left' or 'right', got {shown(side)}", "truncation_side")
    if not request.HasField("truncate_prompt_tokens"):
        if side is not None:
            raise invalid("'truncation_side' needs 'truncate_prompt_tokens'", "truncation_side")
        return None
    tokens = request.truncate_prompt_tokens
    if tokens == 0 or tokens < -1:
        raise invalid(
            f"'truncate_prompt_tokens' must be -1 (the context's room) or at least 1, got {tokens}",
            "truncate_prompt_tokens",
        )
    return Truncation(tokens, side)


def _token_ids(ids: Any, param: str) -> tuple[int, ...]:
    """Token ids, none negative (their range against the vocabulary is checked where the tokenizer is)."""
    for j, token in enumerate(ids):
        if token < 0:
            raise invalid(f"'{param}[{j}]' is {token}, which is negative", f"{param}[{j}]")
    return tuple(ids)
