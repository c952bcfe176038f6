"""Run one chat or completion request on the engine and assemble its result.

This is the only place that turns caller-facing sampling (`Sampling`, with defaults left open) into the engine's
`SamplingOptions`, checks the request against the model's context, and counts usage. `n` choices are `n` engine
requests over the same prompt (vLLM's prefix cache makes the shared prompt cheap), merged as they produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from chatgen.chat.admission import Admission
from chatgen.chat.forced_tools import ForcedTools, forced_tools
from chatgen.chat.parsing import OutputParser
from chatgen.chat.prompts import render_chat, render_completion, template_variables
from chatgen.chat.types import (
    ChatRequest,
    Choice,
    CompletionRequest,
    Delta,
    Result,
    Sampling,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from chatgen.engine import (
    Engine,
    EngineError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    SamplingOptions,
    TokenLogprob,
)
from chatgen.errors import ChatgenError, Failure, context_length_exceeded, invalid, unsupported

T = TypeVar("T")

MAX_N = 16
MAX_TOP_LOGPROBS = 20


class GenerationObserver(Protocol):
    """What the chat layer reports while requests run (chatgen.metrics implements it)."""

    def engine_request_started(self) -> None: ...

    def engine_request_aborted(self) -> None:
        """An engine request stopped before it finished (its caller cancelled, went away or timed out)."""

    def output_gap(self, seconds: float) -> None:
        """Time between two successive outputs of one engine request: the inter-token latency."""


@dataclass
class Generation:
    """A prepared request: prompt tokens and engine options, plus the usage counted while it runs."""

    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    n: int = 1
    # Per choice: splits chat output into reasoning and answer (chat requests on models with a parser).
    parsers: list[OutputParser] | None = None
    # Completions with echo: text returned in front of every choice.
    echo: str = ""
    # Per choice, for tool_choice "required" / a named function: the constrained output is the call.
    forced: list[ForcedTools | None] | None = None
    # parallel_tool_calls false: calls after the first are dropped.
    max_tool_calls: int | None = None
    completion_tokens: int = field(default=0)
    # time.perf_counter() when the first output carrying tokens arrived (any choice), for time to first token.
    first_token_at: float | None = None

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=len(self.prompt_token_ids), completion_tokens=self.completion_tokens)

    def engine_request(self, index: int) -> EngineRequest:
        options = self.options
        if self.n > 1 and options.seed is not None:
            # One seed for all choices would make them identical; seeded choices stay reproducible.
            options = replace(options, seed=options.seed + index)
        request_id = self.request_id if self.n == 1 else f"{self.request_id}-{index}"
        return EngineRequest(request_id, self.prompt_token_ids, options)


class Generator:
    def __init__(
        self,
        engine: Engine,
        parser_cls: type | None = None,
        tool_calls: bool = False,
        admission: Admission | None = None,
        observer: GenerationObserver | None = None,
    ) -> None:
        self._engine = engine
        self._admission = admission
        self._observer = observer
        # vLLM's Parser class for the served model (reasoning and/or tool calls), when one is configured.
        self._parser_cls = parser_cls
        # Whether a tool-call parser is configured, i.e. tool_choice "auto" can return tool calls.
        self._tool_calls = tool_calls
        # The chat template and the tokenizer run on a thread of their own, as in vLLM's own renderer: the Rust
        # tokenizer takes ≈ 6 µs a token here (a 16k-token prompt: 100 ms), which on the event loop would stall
        # every stream the process serves. One thread: prompts are rendered in order, and the tokenizer is never
        # used by two of ours at once.
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatgen-render")

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

    def admitted(self, gen: Generation) -> contextlib.AbstractAsyncContextManager[None]:
        """Run `gen` inside this block: it waits for engine capacity, or fails fast when the queue is full."""
        if self._admission is None:
            return contextlib.nullcontext()
        return self._admission.slots(gen.n)

    async def _render(self, render: Callable[..., list[int]], *args: Any) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(self._renderer, render, *args)

    async def prepare_chat(self, request: ChatRequest, id_prefix: str = "chatcmpl-") -> Generation:
        self._check_model(request.model)
        variables = template_variables(request)
        _check_tools(request, self._tool_calls)
        forced = forced_tools(request, request.forced_function)
        sampling = request.sampling
        if forced is not None:
            if sampling.json_schema is not None:
                raise unsupported("a forced tool_choice cannot be combined with response_format", "response_format")
            sampling = replace(sampling, json_schema=forced.schema)
        tools = request.tools if request.tool_choice != "none" else None
        ids = await self._render(render_chat, self._engine.tokenizer, request.messages, variables, tools)
        gen = self._prepare(id_prefix, ids, sampling, "messages", request.request_id)
        if forced is not None:
            # Each choice gets its own call ids; the first choice reuses the instance built above.
            gen.forced = [forced, *(forced_tools(request, request.forced_function) for _ in range(gen.n - 1))]
        gen.max_tool_calls = 1 if request.parallel_tool_calls is False else None
        if self._parser_cls is not None and forced is None:
            tokenizer = self._engine.tokenizer
            gen.parsers = [OutputParser(self._parser_cls, tokenizer, request, variables, ids) for _ in range(gen.n)]
        return gen

    async def prepare_completion(self, request: CompletionRequest, id_prefix: str = "cmpl-") -> Generation:
        self._check_model(request.model)
        ids = await self._render(render_completion, self._engine.tokenizer, request.prompt)
        gen = self._prepare(id_prefix, ids, request.sampling, "prompt", request.request_id)
        if request.echo:
            gen.echo = request.prompt
            # Echoed text gets logprobs too, as in vLLM: the prompt's tokens are scored as well.
            gen.options = replace(gen.options, prompt_logprobs=gen.options.logprobs)
        return gen

    def _prepare(
        self, id_prefix: str, ids: list[int], s: Sampling, prompt_param: str, request_id: str | None
    ) -> Generation:
        limit = self._engine.model.max_model_len
        room = limit - len(ids)
        if room < 1:
            raise context_length_exceeded(
                f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens",
                prompt_param,
            )
        if s.max_tokens is not None and s.max_tokens < 1:
            raise invalid(f"'max_tokens' must be at least 1, got {s.max_tokens}", "max_tokens")
        if s.max_tokens is not None and s.max_tokens > room:
            raise context_length_exceeded(
                f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens and "
                f"max_tokens asks for {s.max_tokens} more",
                "max_tokens",
            )
        if not 1 <= s.n <= MAX_N:
            raise invalid(f"'n' must be between 1 and {MAX_N}, got {s.n}", "n")
        if s.logprobs is not None:
            if not self._engine.supports_logprobs:
                raise unsupported(f"the {self._engine.name} engine does not report logprobs", "logprobs")
            if not 0 <= s.logprobs <= MAX_TOP_LOGPROBS:
                raise invalid(f"top logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {s.logprobs}", "logprobs")
        vocab = len(self._engine.tokenizer)
        for token, bias in s.logit_bias:
            if not 0 <= token < vocab:
                raise invalid(f"logit_bias has token id {token}, outside the vocabulary (0..{vocab - 1})", "logit_bias")
            if not -100.0 <= bias <= 100.0:
                raise invalid(f"logit_bias values must be between -100 and 100, got {bias}", "logit_bias")
        for token in s.stop_token_ids:
            if not 0 <= token < vocab:
                raise invalid(f"stop_token_ids has {token}, outside the vocabulary", "stop_token_ids")
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
            stop_token_ids=s.stop_token_ids,
            logit_bias=s.logit_bias,
            logprobs=s.logprobs,
            skip_special_tokens=s.skip_special_tokens,
            json_schema=s.json_schema,
        )
        _check_ranges(options)
        return Generation(f"{id_prefix}{request_id or uuid.uuid4().hex}", ids, options, n=s.n)

    async def _outputs(self, gen: Generation, index: int) -> AsyncGenerator[EngineOutput, None]:
        """One choice's engine outputs, counted into usage. Closing this iterator aborts its engine request."""
        finished = False
        observer = self._observer
        if observer is not None:
            observer.engine_request_started()
        last: float | None = None
        try:
            # aclosing: when our caller stops early, the engine's generator is closed now (aborting the request),
            # not whenever the garbage collector gets to it.
            async with contextlib.aclosing(self._engine.generate(gen.engine_request(index))) as outputs:
                async for out in outputs:
                    if out.token_ids:
                        now = time.perf_counter()
                        if gen.first_token_at is None:
                            gen.first_token_at = now
                        if last is not None and observer is not None:
                            observer.output_gap(now - last)
                        last = now
                    gen.completion_tokens += len(out.token_ids)
                    finished = out.finish_reason is not None
                    yield out
        except EngineError as exc:
            raise ChatgenError(Failure.ENGINE_UNAVAILABLE, str(exc)) from exc
        except EngineRejectedRequest as exc:
            raise invalid(exc.message, exc.param) from exc
        finally:
            if not finished and observer is not None:
                observer.engine_request_aborted()

    async def _choice_deltas(self, gen: Generation, index: int) -> AsyncGenerator[Delta, None]:
        if gen.forced is not None and gen.forced[index] is not None:
            async for delta in self._forced_deltas(gen, index, gen.forced[index]):  # type: ignore[arg-type]
                yield delta
            return
        parser = gen.parsers[index] if gen.parsers else None
        first = True
        async with contextlib.aclosing(self._outputs(gen, index)) as outputs:
            async for out in outputs:
                text, reasoning = out.text, ""
                tool_calls: tuple[ToolCallDelta, ...] = ()
                finish = out.finish_reason
                if parser is not None:
                    parsed = parser.delta(out.text, out.token_ids, finished=finish is not None)
                    text, reasoning, tool_calls = parsed.content, parsed.reasoning, parsed.tool_call_deltas
                    if gen.max_tool_calls is not None:
                        tool_calls = tuple(c for c in tool_calls if c.index < gen.max_tool_calls)
                    if finish == "stop" and parser.called_tools:
                        finish = "tool_calls"
                if first and gen.echo:
                    text = gen.echo + text
                first = False
                if text or reasoning or finish or out.logprobs or tool_calls or out.prompt_logprobs:
                    yield Delta(text, finish, reasoning, index, out.logprobs, tool_calls, out.prompt_logprobs)

    async def _forced_deltas(self, gen: Generation, index: int, forced: ForcedTools) -> AsyncGenerator[Delta, None]:
        """A named function's arguments stream as they are written; "required" calls come whole at the end
        (their names are only known once the JSON array is complete)."""
        opening = forced.first_delta()
        if opening is not None:
            yield Delta("", index=index, tool_calls=(opening,))
        parts: list[str] = []
        async with contextlib.aclosing(self._outputs(gen, index)) as outputs:
            async for out in outputs:
                parts.append(out.text)
                finish = out.finish_reason
                calls: tuple[ToolCallDelta, ...] = ()
                if opening is not None and out.text:
                    calls = (ToolCallDelta(0, arguments=out.text),)
                elif opening is None and finish is not None:
                    whole = forced.calls("".join(parts))
                    calls = tuple(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(whole))
                if finish == "stop":
                    finish = forced.finish_reason
                if calls or finish or out.logprobs:
                    yield Delta("", finish, "", index, out.logprobs, calls)

    def stream(self, gen: Generation) -> AsyncGenerator[Delta, None]:
        """Deltas of all choices as the engine produces them (interleaved when n > 1)."""
        if gen.n == 1:
            return self._choice_deltas(gen, 0)
        return _merge([functools.partial(self._choice_deltas, gen, i) for i in range(gen.n)])

    async def complete(self, gen: Generation) -> Result:
        choices = await asyncio.gather(*(self._complete_choice(gen, i) for i in range(gen.n)))
        return Result(choices=list(choices), usage=gen.usage)

    async def _complete_choice(self, gen: Generation, index: int) -> Choice:
        parts: list[str] = []
        token_ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        prompt_logprobs: tuple[TokenLogprob, ...] = ()
        finish_reason = "stop"
        async with contextlib.aclosing(self._outputs(gen, index)) as outputs:
            async for out in outputs:
                parts.append(out.text)
                token_ids.extend(out.token_ids)
                logprobs.extend(out.logprobs)
                prompt_logprobs = prompt_logprobs or out.prompt_logprobs
                if out.finish_reason:
                    finish_reason = out.finish_reason
        text = "".join(parts)
        reasoning: str | None = None
        tool_calls: tuple[ToolCall, ...] = ()
        forced = gen.forced[index] if gen.forced else None
        if forced is not None:
            tool_calls = forced.calls(text)
            if tool_calls:
                text = ""
                finish_reason = forced.finish_reason if finish_reason == "stop" else finish_reason
        elif gen.parsers:
            parsed = gen.parsers[index].final(text, token_ids)
            text, reasoning, tool_calls = parsed.content, parsed.reasoning or None, parsed.tool_calls
            tool_calls = tool_calls[: gen.max_tool_calls]
            if tool_calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        return Choice(
            index=index,
            text=gen.echo + text,
            finish_reason=finish_reason,
            reasoning=reasoning,
            logprobs=tuple(logprobs) if gen.options.logprobs is not None else None,
            tool_calls=tool_calls,
            prompt_logprobs=prompt_logprobs,
        )


async def _merge(sources: list[Callable[[], AsyncGenerator[T, None]]]) -> AsyncGenerator[T, None]:
    """Items of several async iterators as they come; the first failure or an early stop cancels them all."""
    queue: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()

    async def pump(make: Callable[[], AsyncGenerator[T, None]]) -> None:
        try:
            async with contextlib.aclosing(make()) as items:
                async for item in items:
                    await queue.put((True, item))
        except Exception as exc:
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    tasks = [asyncio.ensure_future(pump(make)) for make in sources]
    try:
        running = len(tasks)
        while running:
            ok, value = await queue.get()
            if ok:
                yield value  # type: ignore[misc]
            elif value is None:
                running -= 1
            else:
                raise value  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _check_tools(request: ChatRequest, parser_configured: bool) -> None:
    for i, tool in enumerate(request.tools):
        if tool.get("type") != "function" or not tool.get("function", {}).get("name"):
            raise invalid("each tool needs type 'function' and function.name", f"tools[{i}]")
    if request.tools and request.tool_choice in (None, "auto") and not parser_configured:
        # As vLLM: without a parser the model's calls would come back as unparsed text.
        raise unsupported(
            "this server has no tool-call parser for the model (start it with --tool-call-parser)", "tools"
        )


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
        # vLLM only asks for > 0, but the penalty divides logits: near 0 they overflow to inf and sampling fails
        # (found by fuzzing with 1.4e-45). Useful values are around 1-2.
        (
            0.01 <= o.repetition_penalty <= 100.0,
            "repetition_penalty",
            f"'repetition_penalty' must be between 0.01 and 100, got {o.repetition_penalty}",
        ),
    ]
    for ok, param, message in checks:
        if not ok:
            raise invalid(message, param)
