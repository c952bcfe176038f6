"""Run one chat or completion request on the engine and assemble its result.

This is the only place that turns caller-facing sampling (`Sampling`, with defaults left open) into the engine's
`SamplingOptions`, checks the request against the model's context, and counts usage.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from chatgen.chat.parsing import OutputParser
from chatgen.chat.prompts import render_chat, render_completion, template_variables
from chatgen.chat.types import ChatRequest, CompletionRequest, Delta, Result, Sampling, Usage
from chatgen.engine import Engine, EngineError, EngineOutput, EngineRequest, SamplingOptions
from chatgen.errors import ChatgenError, Failure, invalid

T = TypeVar("T")


@dataclass
class Generation:
    """A prepared request: prompt tokens and engine options, plus the usage counted while it runs."""

    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    # Splits chat output into reasoning and answer; None for completions and models without a parser.
    parser: OutputParser | None = None
    completion_tokens: int = field(default=0)

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=len(self.prompt_token_ids), completion_tokens=self.completion_tokens)


class Generator:
    def __init__(self, engine: Engine, parser_cls: type | None = None) -> None:
        self._engine = engine
        # vLLM's Parser class for the served model (reasoning), when one is configured.
        self._parser_cls = parser_cls

    @property
    def model_name(self) -> str:
        return self._engine.model.name

    def _check_model(self, model: str) -> None:
        if not model:
            raise invalid("'model' is required", "model")
        if model != self.model_name:
            raise ChatgenError(
                Failure.MODEL_NOT_FOUND,
                f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                "model",
            )

    def prepare_chat(self, request: ChatRequest, id_prefix: str = "chatcmpl-") -> Generation:
        self._check_model(request.model)
        variables = template_variables(request)
        ids = render_chat(self._engine.tokenizer, request.messages, variables)
        gen = self._prepare(id_prefix, ids, request.sampling, "messages")
        if self._parser_cls is not None:
            gen.parser = OutputParser(self._parser_cls, self._engine.tokenizer, request, variables, ids)
        return gen

    def prepare_completion(self, request: CompletionRequest, id_prefix: str = "cmpl-") -> Generation:
        self._check_model(request.model)
        ids = render_completion(self._engine.tokenizer, request.prompt)
        return self._prepare(id_prefix, ids, request.sampling, "prompt")

    def _prepare(self, id_prefix: str, ids: list[int], s: Sampling, prompt_param: str) -> Generation:
        limit = self._engine.model.max_model_len
        room = limit - len(ids)
        if room < 1:
            raise invalid(
                f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens",
                prompt_param,
            )
        if s.max_tokens is not None and s.max_tokens < 1:
            raise invalid(f"'max_tokens' must be at least 1, got {s.max_tokens}", "max_tokens")
        if s.max_tokens is not None and s.max_tokens > room:
            raise invalid(
                f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens and "
                f"max_tokens asks for {s.max_tokens} more",
                "max_tokens",
            )
        options = SamplingOptions(
            max_tokens=s.max_tokens if s.max_tokens is not None else room,
            temperature=_default(s.temperature, 1.0),
            top_p=_default(s.top_p, 1.0),
            top_k=_default(s.top_k, 0),
            min_p=_default(s.min_p, 0.0),
            presence_penalty=_default(s.presence_penalty, 0.0),
            frequency_penalty=_default(s.frequency_penalty, 0.0),
            repetition_penalty=_default(s.repetition_penalty, 1.0),
            seed=s.seed,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
        )
        _check_ranges(options)
        return Generation(request_id=f"{id_prefix}{uuid.uuid4().hex}", prompt_token_ids=ids, options=options)

    async def _outputs(self, gen: Generation) -> AsyncIterator[EngineOutput]:
        """Engine outputs, counted into usage. Closing this iterator aborts the engine request."""
        request = EngineRequest(gen.request_id, gen.prompt_token_ids, gen.options)
        try:
            # aclosing: when our caller stops early, the engine's generator is closed now (aborting the request),
            # not whenever the garbage collector gets to it.
            async with contextlib.aclosing(self._engine.generate(request)) as outputs:
                async for out in outputs:
                    gen.completion_tokens += len(out.token_ids)
                    yield out
        except EngineError as exc:
            raise ChatgenError(Failure.ENGINE_UNAVAILABLE, str(exc)) from exc

    async def stream(self, gen: Generation) -> AsyncIterator[Delta]:
        """Deltas as the engine produces them (reasoning split off when a parser is configured)."""
        async with contextlib.aclosing(self._outputs(gen)) as outputs:
            async for out in outputs:
                if gen.parser is None:
                    text, reasoning = out.text, ""
                else:
                    parsed = gen.parser.delta(out.text, out.token_ids, finished=out.finish_reason is not None)
                    text, reasoning = parsed.content, parsed.reasoning
                if text or reasoning or out.finish_reason:
                    yield Delta(text=text, finish_reason=out.finish_reason, reasoning=reasoning)

    async def complete(self, gen: Generation) -> Result:
        parts: list[str] = []
        token_ids: list[int] = []
        finish_reason = "stop"
        async with contextlib.aclosing(self._outputs(gen)) as outputs:
            async for out in outputs:
                parts.append(out.text)
                token_ids.extend(out.token_ids)
                if out.finish_reason:
                    finish_reason = out.finish_reason
        text = "".join(parts)
        reasoning: str | None = None
        if gen.parser is not None:
            parsed = gen.parser.final(text, token_ids)
            text, reasoning = parsed.content, parsed.reasoning or None
        return Result(text=text, finish_reason=finish_reason, usage=gen.usage, reasoning=reasoning)


def _default(value: T | None, fallback: T) -> T:
    return fallback if value is None else value


def _check_ranges(o: SamplingOptions) -> None:
    # The engine would reject these too, but only once the request is queued, and without naming the field.
    checks: list[tuple[bool, str, str]] = [
        (0.0 <= o.temperature <= 2.0, "temperature", f"'temperature' must be between 0 and 2, got {o.temperature}"),
        (0.0 < o.top_p <= 1.0, "top_p", f"'top_p' must be in (0, 1], got {o.top_p}"),
        (o.top_k >= -1, "top_k", f"'top_k' must be -1, 0 (disabled) or positive, got {o.top_k}"),
        (0.0 <= o.min_p <= 1.0, "min_p", f"'min_p' must be between 0 and 1, got {o.min_p}"),
        (-2.0 <= o.presence_penalty <= 2.0, "presence_penalty", "'presence_penalty' must be between -2 and 2"),
        (-2.0 <= o.frequency_penalty <= 2.0, "frequency_penalty", "'frequency_penalty' must be between -2 and 2"),
        (o.repetition_penalty > 0.0, "repetition_penalty", "'repetition_penalty' must be greater than 0"),
    ]
    for ok, param, message in checks:
        if not ok:
            raise invalid(message, param)
