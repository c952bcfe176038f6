"""A prepared request's work on the engine: its choices' engine requests, turned into deltas (streams) or whole
choices (unary calls). `n` choices are `n` engine requests over the same prompt (vLLM's prefix cache makes the
shared prompt cheap), merged as they produce."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from chatgen.chat.accounting import RequestStats
from chatgen.chat.coalescing import StreamInterval, coalesce
from chatgen.chat.forced_tools import ForcedTools
from chatgen.chat.parsing import OutputParser
from chatgen.chat.types import Choice, Delta, Result, ToolCall, ToolCallDelta, Usage
from chatgen.chat.validation.sampling import ReplyExtras
from chatgen.engine import Engine, EngineError, EngineOutput, EngineRejectedRequest, EngineRequest, SamplingOptions
from chatgen.engine.base import Adapter, TokenLogprob
from chatgen.errors import ApiError, Failure, invalid

T = TypeVar("T")


class EngineObserver(Protocol):
    """What the chat layer reports while engine requests run (chatgen.metrics implements it)."""

    def engine_request_started(self) -> None: ...

    def engine_request_aborted(self) -> None:
        """An engine request stopped before it finished (its caller cancelled, went away or timed out)."""

    def output_gap(self, seconds: float) -> None:
        """Time between two successive outputs of one engine request: the inter-token latency."""


@dataclass
class Job:
    """One request, rendered and checked against the model: prompt tokens, engine options, its choices' extras."""

    id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    stats: RequestStats
    # Choices per prompt.
    n: int = 1
    # Per choice: splits chat output into reasoning, answer and tool calls (models with a parser).
    parsers: list[OutputParser] | None = None
    # Completions with a batch of prompts: each prompt's tokens (prompt_token_ids is the first); choice k runs
    # prompt k // n. Empty: prompt_token_ids alone.
    batch: list[list[int]] = field(default_factory=list)
    # Completions with echo: per prompt, the text returned in front of each of its choices.
    echoes: tuple[str, ...] = ()
    # Per choice, for tool_choice "required" / a named function: the constrained output is the call.
    forced: list[ForcedTools] | None = None
    # parallel_tool_calls false: calls after the first are dropped.
    max_tool_calls: int | None = None
    # What vLLM's extensions add to the reply: token ids, prompt logprobs, tokens named by id.
    extras: ReplyExtras = field(default_factory=ReplyExtras)
    # The LoRA adapter every choice runs with (None: the base model).
    adapter: Adapter | None = None
    # How a stream's outputs coalesce into chunks (unary calls take each choice whole).
    interval: StreamInterval = field(default_factory=StreamInterval)

    @property
    def token_ids(self) -> bool:
        return self.extras.token_ids

    def __post_init__(self) -> None:
        if not self.batch:
            self.batch = [self.prompt_token_ids]

    @property
    def choices(self) -> int:
        return self.n * len(self.batch)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of every prompt (each counted once, however many choices it has), as vLLM counts them."""
        return sum(len(ids) for ids in self.batch)

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.stats.completion_tokens)

    def echo(self, index: int) -> str:
        return self.echoes[index // self.n] if self.echoes else ""

    def prompts(self) -> tuple[tuple[int, ...], ...] | None:
        """Each prompt's token ids, when the caller asked for token ids."""
        return tuple(tuple(ids) for ids in self.batch) if self.token_ids else None

    def engine_request(self, index: int) -> EngineRequest:
        options = self.options
        if self.n > 1 and options.seed is not None:
            # One seed for all of a prompt's choices would make them identical; seeded choices stay reproducible.
            options = replace(options, seed=options.seed + index % self.n)
        request_id = self.id if self.choices == 1 else f"{self.id}-{index}"
        return EngineRequest(request_id, self.batch[index // self.n], options, self.adapter)


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        observer: EngineObserver | None = None,
        on_engine_failure: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._observer = observer
        # Awaited before an engine failure reaches its caller: health turns NOT_SERVING before any caller can
        # see a failed call.
        self._on_engine_failure = on_engine_failure
        # Engine request ids running now, and why they were all stopped (revoke), if they were.
        self._running: set[str] = set()
        self._revoked: ApiError | None = None

    async def revoke(self, err: ApiError) -> None:
        """End every engine request running now, and any started later, with `err` (the drain's grace period is
        over): each caller gets its error (a stream its error event) instead of a connection cut under it."""
        self._revoked = err
        for request_id in list(self._running):
            await self._engine.abort(request_id)

    async def _engine_healthy(self) -> bool:
        """Whether the engine still serves after a request failed in it (one request's failure is not the
        engine's death: the transformers engine fails a single generation that way)."""
        try:
            await self._engine.check_health()
        except EngineError:
            return False
        return True

    async def _outputs(self, job: Job, index: int) -> AsyncGenerator[EngineOutput, None]:
        """One choice's engine outputs, counted into the job's stats. Closing this iterator aborts the request."""
        if self._revoked is not None:
            raise self._revoked
        finished = False
        observer, stats = self._observer, job.stats
        if observer is not None:
            observer.engine_request_started()
        last: float | None = None
        request = job.engine_request(index)
        self._running.add(request.request_id)
        try:
            # aclosing: when our caller stops early, the engine's generator is closed now (aborting the request),
            # not whenever the garbage collector gets to it.
            async with contextlib.aclosing(self._engine.generate(request)) as outputs:
                async for out in outputs:
                    if self._revoked is not None and out.finish_reason in (None, "abort"):
                        raise self._revoked
                    if out.token_ids:
                        now = time.perf_counter()
                        if stats.first_token_at is None:
                            stats.first_token_at = now
                        if last is not None and observer is not None:
                            observer.output_gap(now - last)
                        last = now
                    stats.completion_tokens += len(out.token_ids)
                    finished = out.finish_reason is not None
                    yield _named_by_id(out) if job.extras.tokens_as_ids else out
            if not finished and self._revoked is not None:
                # Aborted by revoke() before its first output, or an engine whose aborted generator just ends.
                raise self._revoked
        except EngineError as exc:
            if self._on_engine_failure is not None and not await self._engine_healthy():
                await self._on_engine_failure(str(exc))
            raise ApiError(Failure.ENGINE_UNAVAILABLE, str(exc)) from exc
        except EngineRejectedRequest as exc:
            raise invalid(exc.message, exc.param) from exc
        finally:
            self._running.discard(request.request_id)
            if not finished and observer is not None:
                observer.engine_request_aborted()

    async def _choice_deltas(self, job: Job, index: int) -> AsyncGenerator[Delta, None]:
        if job.forced is not None:
            async for delta in self._forced_deltas(job, index, job.forced[index]):
                yield delta
            return
        parser = job.parsers[index] if job.parsers else None
        first = True
        async with contextlib.aclosing(coalesce(self._outputs(job, index), job.interval)) as outputs:
            async for out in outputs:
                text, reasoning = out.text, ""
                tool_calls: tuple[ToolCallDelta, ...] = ()
                finish = out.finish_reason
                if parser is not None:
                    parsed = parser.delta(out.text, out.token_ids, finished=finish is not None)
                    text, reasoning, tool_calls = parsed.content, parsed.reasoning, parsed.tool_call_deltas
                    if job.max_tool_calls is not None:
                        tool_calls = tuple(c for c in tool_calls if c.index < job.max_tool_calls)
                    if finish == "stop" and parser.called_tools:
                        finish = "tool_calls"
                if first and job.echoes:
                    text = job.echo(index) + text
                first = False
                ids = out.token_ids if job.token_ids else ()
                if text or reasoning or finish or out.logprobs or tool_calls or out.prompt_logprobs or ids:
                    yield Delta(
                        text,
                        finish,
                        reasoning,
                        index,
                        out.logprobs,
                        tool_calls,
                        out.prompt_logprobs,
                        out.stop_sequence,
                        ids,
                    )

    async def _forced_deltas(self, job: Job, index: int, forced: ForcedTools) -> AsyncGenerator[Delta, None]:
        """A named function's arguments stream as they are written; "required" calls come whole at the end
        (their names are only known once the JSON array is complete)."""
        opening = forced.first_delta()
        if opening is not None:
            yield Delta("", index=index, tool_calls=(opening,))
        parts: list[str] = []
        async with contextlib.aclosing(coalesce(self._outputs(job, index), job.interval)) as outputs:
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
                ids = out.token_ids if job.token_ids else ()
                if calls or finish or out.logprobs or ids:
                    yield Delta("", finish, "", index, out.logprobs, calls, token_ids=ids)

    def stream(self, job: Job) -> AsyncGenerator[Delta, None]:
        """Deltas of all choices as the engine produces them (interleaved when there are several)."""
        if job.choices == 1:
            return self._choice_deltas(job, 0)
        return merge([functools.partial(self._choice_deltas, job, i) for i in range(job.choices)])

    async def collect(self, job: Job) -> Result:
        choices = await asyncio.gather(*(self._collect_choice(job, i) for i in range(job.choices)))
        return Result(id=job.id, choices=list(choices), usage=job.usage, scored_prompt=job.extras.prompt_logprobs)

    async def _collect_choice(self, job: Job, index: int) -> Choice:
        parts: list[str] = []
        token_ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        prompt_logprobs: tuple[TokenLogprob, ...] = ()
        finish_reason = "stop"
        stop_sequence: str | None = None
        async with contextlib.aclosing(self._outputs(job, index)) as outputs:
            async for out in outputs:
                parts.append(out.text)
                token_ids.extend(out.token_ids)
                logprobs.extend(out.logprobs)
                prompt_logprobs = prompt_logprobs or out.prompt_logprobs
                if out.finish_reason:
                    finish_reason, stop_sequence = out.finish_reason, out.stop_sequence
        text = "".join(parts)
        reasoning: str | None = None
        tool_calls: tuple[ToolCall, ...] = ()
        if job.forced is not None:
            forced = job.forced[index]
            tool_calls = forced.calls(text)
            if tool_calls:
                text = ""
                finish_reason = forced.finish_reason if finish_reason == "stop" else finish_reason
        elif job.parsers:
            parsed = job.parsers[index].final(text, token_ids)
            text, reasoning, tool_calls = parsed.content, parsed.reasoning or None, parsed.tool_calls
            tool_calls = tool_calls[: job.max_tool_calls]
            if tool_calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        return Choice(
            index=index,
            text=job.echo(index) + text,
            finish_reason=finish_reason,
            reasoning=reasoning,
            logprobs=tuple(logprobs) if job.options.logprobs is not None else None,
            tool_calls=tool_calls,
            prompt_logprobs=prompt_logprobs,
            stop_sequence=stop_sequence,
            token_ids=tuple(token_ids) if job.token_ids else None,
            prompt_token_ids=tuple(job.batch[index // job.n]) if job.token_ids else None,
        )


def _named_by_id(out: EngineOutput) -> EngineOutput:
    """vLLM's return_tokens_as_token_ids: logprob entries name their tokens "token_id:<id>"."""

    def named(lp: TokenLogprob) -> TokenLogprob:
        top = tuple((f"token_id:{i}", v) for i, (_, v) in zip(lp.top_ids, lp.top, strict=False))
        return replace(lp, token=f"token_id:{lp.token_id}", top=top)

    return replace(
        out, logprobs=tuple(map(named, out.logprobs)), prompt_logprobs=tuple(map(named, out.prompt_logprobs))
    )


async def merge(sources: list[Callable[[], AsyncGenerator[T, None]]]) -> AsyncGenerator[T, None]:
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
