"""A text completion request -> one validated `CompletionPlan` (as chat.py does for chat requests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatgen.chat.validation import structured, text, values
from chatgen.chat.validation.sampling import (
    ReplyExtras,
    SamplingPlan,
    ServedModel,
    check_logprobs,
    check_model,
    check_stream_options,
    continuous_usage,
    reply_extras,
    sampling_plan,
)
from chatgen.errors import unsupported
from chatgen.v1 import chatgen_pb2 as pb


@dataclass(frozen=True)
class CompletionPlan:
    model: str
    # One or more prompts (a batch): each gets `sampling.n` choices, choice k answering prompt k // n.
    prompts: tuple[values.Prompt, ...]
    sampling: SamplingPlan
    # Return the prompt in front of each choice's text (and, with logprobs, score the prompt's tokens too).
    echo: bool
    request_id: str | None
    include_usage: bool
    # stream_options.continuous_usage_stats: each delta carries the usage so far.
    continuous_usage: bool = False
    # What vLLM's extensions add to the reply (token ids, prompt logprobs).
    extras: ReplyExtras = field(default_factory=ReplyExtras)


def validate_completion(request: pb.CreateCompletionRequest, model: ServedModel, streaming: bool) -> CompletionPlan:
    text.check_strings(request)
    check_model(request, model)
    prompts = values.prompts(request.prompt)
    logprobs = check_logprobs(request.logprobs if request.HasField("logprobs") else None, model, "logprobs")
    grammar = structured.constraint(request)
    max_tokens = request.max_tokens if request.HasField("max_tokens") else None
    sampling = sampling_plan(request, model, max_tokens, logprobs, grammar)
    choices = len(prompts) * sampling.n
    if choices > model.max_choices:
        raise unsupported(
            f"{len(prompts)} prompts with n={sampling.n} make {choices} choices, but this server runs at most "
            f"{model.max_choices} choices at once",
            "prompt",
        )
    return CompletionPlan(
        model=request.model,
        prompts=prompts,
        sampling=sampling,
        echo=request.echo,
        request_id=text.request_id(request.request_id),
        include_usage=check_stream_options(request, streaming),
        continuous_usage=continuous_usage(request, streaming),
        extras=reply_extras(request, streaming),
    )
