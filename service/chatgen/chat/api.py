"""The chat layer's one entry point: a request message in, a result or a stream of deltas out.

Each call validates the request (chatgen.chat.validation), renders and tokenizes its prompt off the event loop,
checks it against the model's context and vocabulary, waits for admission, and runs it on the engine (job.py).
The transport makes one call per RPC and converts what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

from chatgen.chat import accounting
from chatgen.chat.admission import Admission
from chatgen.chat.grammar import GrammarCheck
from chatgen.chat.job import EngineObserver, Job, JobRunner
from chatgen.chat.parsing import OutputParser
from chatgen.chat.prompts import render_chat, render_completion
from chatgen.chat.types import Result, StreamItem, StreamStart, Tokens
from chatgen.chat.validation import (
    ChatPlan,
    CompletionPlan,
    SamplingPlan,
    ServedModel,
    validate_chat,
    validate_completion,
)
from chatgen.chat.validation.messages import translate, translate_count
from chatgen.chat.validation.tokenize import validate_detokenize, validate_tokenize
from chatgen.engine import Engine
from chatgen.errors import ApiError, Failure, context_length_exceeded, invalid
from chatgen.v1 import chatgen_pb2 as pb


class ChatApi:
    def __init__(
        self,
        engine: Engine,
        served: ServedModel,
        parser_cls: type | None = None,
        admission: Admission | None = None,
        observer: EngineObserver | None = None,
        grammars: GrammarCheck | None = None,
        on_engine_failure: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self.served = served
        # vLLM's Parser class for the served model (reasoning and/or tool calls), when one is configured.
        self._parser_cls = parser_cls
        self._admission = admission
        self._runner = JobRunner(engine, observer, on_engine_failure)
        # Decoding schemas are compiled here first, within a time limit (None: the engine compiles them as sent).
        self._grammars = grammars
        # The chat template and the tokenizer run on a thread of their own, as in vLLM's own renderer: the Rust
        # tokenizer takes ≈ 6 µs a token here (a 16k-token prompt: 100 ms), which on the event loop would stall
        # every stream the process serves. One thread: prompts are rendered in order, and the tokenizer is never
        # used by two of ours at once.
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatgen-render")

    async def revoke(self, reason: str) -> None:
        """End every request in flight (waiting or running) with UNAVAILABLE `reason`: the drain is over."""
        err = ApiError(Failure.SHUTTING_DOWN, reason)
        if self._admission is not None:
            self._admission.stop(err)
        await self._runner.revoke(err)

    async def chat(self, request: pb.CreateChatCompletionRequest) -> Result:
        job = await self._chat_job(validate_chat(_named(request), self.served, streaming=False))
        async with self._admitted(job):
            return await self._runner.collect(job)

    async def chat_stream(self, request: pb.CreateChatCompletionRequest) -> AsyncGenerator[StreamItem, None]:
        plan = validate_chat(_named(request), self.served, streaming=True)
        job = await self._chat_job(plan)
        async with contextlib.aclosing(self._stream(job, plan.include_usage, plan.continuous_usage)) as items:
            async for item in items:
                yield item

    async def complete(self, request: pb.CreateCompletionRequest) -> Result:
        job = await self._completion_job(validate_completion(_named(request), self.served, streaming=False))
        async with self._admitted(job):
            return await self._runner.collect(job)

    async def complete_stream(self, request: pb.CreateCompletionRequest) -> AsyncGenerator[StreamItem, None]:
        plan = validate_completion(_named(request), self.served, streaming=True)
        job = await self._completion_job(plan)
        async with contextlib.aclosing(self._stream(job, plan.include_usage, plan.continuous_usage)) as items:
            async for item in items:
                yield item

    async def message(self, request: pb.CreateMessageRequest) -> Result:
        """An Anthropic Messages request, run as the chat request it stands for."""
        return await self.translated(translate(_named(request), streaming=False))

    def message_stream(self, request: pb.CreateMessageRequest) -> AsyncGenerator[StreamItem, None]:
        return self.translated_stream(translate(_named(request), streaming=True))

    async def translated(self, translation: Translation) -> Result:
        """Another API's request (Messages, Responses), run as the chat request it stands for; its errors name
        that API's fields."""
        with _renamed(translation):
            return await self.chat(translation.chat)

    async def translated_stream(self, translation: Translation) -> AsyncGenerator[StreamItem, None]:
        with _renamed(translation):
            async with contextlib.aclosing(self.chat_stream(translation.chat)) as items:
                async for item in items:
                    yield item

    async def text_tokens(self, text: str) -> int:
        """How many tokens `text` is (e.g. a reply's reasoning)."""
        return len(await self._render(lambda: self._engine.tokenizer.encode(text, add_special_tokens=False)))

    async def count_message_tokens(self, request: pb.CountMessageTokensRequest) -> int:
        """The prompt's tokens, as a Messages request with these turns would run it."""
        translation = translate_count(_named(request))
        with _renamed(translation):
            plan = validate_chat(translation.chat, self.served, streaming=False)
            return len(await self._render(render_chat, self._engine.tokenizer, plan))

    async def tokenize(self, request: pb.TokenizeRequest) -> Tokens:
        """A prompt or a conversation as the model sees it (vLLM's /tokenize)."""
        plan = validate_tokenize(_named(request), self.served)
        tokenizer = self._engine.tokenizer
        if plan.chat is not None:
            ids = await self._render(render_chat, tokenizer, plan.chat)
        else:
            ids = await self._render(
                lambda: list(tokenizer.encode(plan.prompt, add_special_tokens=plan.add_special_tokens))
            )
        strs = tuple(tokenizer.convert_ids_to_tokens(ids)) if plan.return_token_strs else ()
        return Tokens(tuple(ids), strs, self._engine.model.max_model_len)

    async def detokenize(self, request: pb.DetokenizeRequest) -> str:
        tokenizer = self._engine.tokenizer
        ids = _in_vocabulary(tuple(validate_detokenize(request, self.served)), len(tokenizer), "tokens")
        return str(await self._render(tokenizer.decode, ids))

    async def _stream(
        self, job: Job, include_usage: bool, continuous: bool = False
    ) -> AsyncGenerator[StreamItem, None]:
        async with self._admitted(job), contextlib.aclosing(self._runner.stream(job)) as deltas:
            yield StreamStart(job.id, job.choices, job.options.logprobs is not None, job.prompt_tokens, job.prompts())
            async for delta in deltas:
                yield replace(delta, usage=job.usage) if continuous else delta
        if include_usage:
            yield job.usage

    def _admitted(self, job: Job) -> contextlib.AbstractAsyncContextManager[None]:
        """Run `job` inside this block: it waits for engine capacity, or fails fast when the queue is full."""
        if self._admission is None:
            return contextlib.nullcontext()
        return self._admission.slots(job.choices, job.options.priority)

    async def _render(self, render: Callable[..., list[int]], *args: Any) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(self._renderer, render, *args)

    async def _chat_job(self, plan: ChatPlan) -> Job:
        ids = await self._render(render_chat, self._engine.tokenizer, plan)
        job = self._job("chatcmpl-", plan.request_id, [ids], plan.sampling, ["messages"])
        await self._check_grammar(plan.sampling)
        job.max_tool_calls = plan.max_tool_calls
        job.extras = plan.extras
        if plan.echo:
            job.echoes = (plan.echo,)
        if plan.forced is not None:
            # Each choice gets its own call ids.
            job.forced = [plan.forced.for_choice() for _ in range(job.n)]
        elif self._parser_cls is not None:
            tokenizer = self._engine.tokenizer
            job.parsers = [OutputParser(self._parser_cls, tokenizer, plan, ids) for _ in range(job.n)]
        return job

    async def _completion_job(self, plan: CompletionPlan) -> Job:
        tokenizer = self._engine.tokenizer
        params = ["prompt"] if len(plan.prompts) == 1 else [f"prompt[{k}]" for k in range(len(plan.prompts))]
        batch = []
        for prompt, param in zip(plan.prompts, params, strict=True):
            if isinstance(prompt, str):
                batch.append(await self._render(render_completion, tokenizer, prompt, param))
            else:
                batch.append(_in_vocabulary(prompt, len(tokenizer), param))
        job = self._job("cmpl-", plan.request_id, batch, plan.sampling, params)
        job.extras = plan.extras
        await self._check_grammar(plan.sampling)
        if plan.echo:
            # Token-id prompts are echoed as their text, as vLLM does, and so are prompts truncate_prompt_tokens cut.
            job.echoes = tuple(
                p if isinstance(p, str) and len(ids) == len(sent) else tokenizer.decode(ids)
                for p, ids, sent in zip(plan.prompts, job.batch, batch, strict=True)
            )
            # Echoed text gets logprobs too, as in vLLM: the prompt's tokens are scored as well.
            if job.options.logprobs is not None:
                scored = max(job.options.prompt_logprobs or 0, job.options.logprobs)
                job.options = replace(job.options, prompt_logprobs=scored)
        return job

    async def _check_grammar(self, sampling: SamplingPlan) -> None:
        if sampling.grammar is not None and self._grammars is not None:
            await self._grammars.check(sampling.grammar)

    def _job(
        self, prefix: str, request_id: str | None, batch: list[list[int]], sampling: SamplingPlan, params: list[str]
    ) -> Job:
        """The checks that need the model: each prompt and max_tokens against the context, token ids against the
        vocabulary. `params`: each prompt's field, for its errors."""
        limit = self._engine.model.max_model_len
        if sampling.truncation is not None:
            batch = self._truncated(batch, sampling)
        for ids, param in zip(batch, params, strict=True):
            if len(ids) >= limit:
                raise context_length_exceeded(
                    f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens", param
                )
            if sampling.max_tokens is not None and sampling.max_tokens > limit - len(ids):
                raise context_length_exceeded(
                    f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)} tokens and "
                    f"max_tokens asks for {sampling.max_tokens} more",
                    "max_tokens",
                )
        # Without max_tokens, each choice may run to the end of the context: the longest prompt bounds them all.
        room = limit - max(len(ids) for ids in batch)
        options = sampling.to_options(room)
        vocab = len(self._engine.tokenizer)
        for token, _ in options.logit_bias:
            if token >= vocab:
                raise invalid(
                    f"logit_bias key '{token}' is outside the vocabulary: this model has {vocab} tokens "
                    f"(ids 0..{vocab - 1})",
                    f"logit_bias.{token}",
                )
        _in_vocabulary(options.stop_token_ids, vocab, "stop_token_ids")
        _in_vocabulary(options.allowed_token_ids, vocab, "allowed_token_ids")
        _in_vocabulary(options.logprob_token_ids, vocab, "logprob_token_ids")
        stats = accounting.current()
        job_id = f"{prefix}{request_id or uuid.uuid4().hex}"
        job = Job(
            job_id,
            batch[0],
            options,
            stats,
            n=sampling.n,
            batch=batch,
            adapter=sampling.adapter,
            interval=sampling.interval,
        )
        stats.completion_id, stats.n, stats.prompt_tokens = job.id, job.choices, job.prompt_tokens
        return job

    def _truncated(self, batch: list[list[int]], sampling: SamplingPlan) -> list[list[int]]:
        """Each prompt cut as truncate_prompt_tokens says; a limit the context cannot hold is an error, as vLLM."""
        assert sampling.truncation is not None
        # The prompt must leave room for the reply: max_tokens when sent, else at least one token.
        room = self._engine.model.max_model_len - (sampling.max_tokens or 1)
        if sampling.truncation.tokens > room:
            raise invalid(
                f"'truncate_prompt_tokens' is {sampling.truncation.tokens}, but the context leaves room for {room} "
                f"prompt tokens",
                "truncate_prompt_tokens",
            )
        side = str(getattr(self._engine.tokenizer, "truncation_side", "right"))
        return [sampling.truncation.apply(ids, room, side) for ids in batch]


class Translation(Protocol):
    """A request of another API as the chat request it stands for (chat.validation.messages, .responses)."""

    @property
    def chat(self) -> pb.CreateChatCompletionRequest: ...

    def renamed(self, err: ApiError) -> ApiError: ...


@contextlib.contextmanager
def _renamed(translation: Translation) -> Iterator[None]:
    """Errors of the chat request name the other API's fields."""
    try:
        yield
    except ApiError as err:
        raise translation.renamed(err) from None


def _in_vocabulary(ids: tuple[int, ...], vocab: int, param: str) -> list[int]:
    for j, token in enumerate(ids):
        if token >= vocab:
            raise invalid(
                f"'{param}[{j}]' is token id {token}, outside the vocabulary: this model has {vocab} tokens "
                f"(ids 0..{vocab - 1})",
                f"{param}[{j}]",
            )
    return list(ids)


def _named(request: Any) -> Any:
    """The request, its model noted in the call's stats (failures are recorded with the model they asked for)."""
    accounting.current().model = request.model
    return request
