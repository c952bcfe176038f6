"""The transformers engine: the fallback where vLLM can't run.

Each request runs `model.generate` on a worker thread (never on the event loop); tokens come back through a
streamer that hands them to the loop. Aborting sets a flag that a stopping criterion checks after every token, so
an aborted request stops within one decode step. Requests do not share batches: this engine is for
correctness where vLLM is unavailable, not for throughput.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from chatgen.engine import hf_logits
from chatgen.engine.base import (
    Constraint,
    Engine,
    EngineError,
    EngineOutput,
    EngineRequest,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)

_DONE = object()


@dataclass(frozen=True)
class HfSettings:
    model_path: str
    served_model_name: str
    max_model_len: int | None = 2048
    dtype: str = "auto"
    max_concurrent: int = 4


class _Cancelled(Exception):
    pass


class _Job:
    """Per-request state shared between the loop (consumer) and the worker thread (producer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _LogprobCapture:
    """A logits processor that keeps the step's log-softmax, so the streamer can score the token then chosen.

    It is the first of our processors and transformers runs custom processors before its sampling warpers
    (temperature, top-k/p), so with default penalties these are the model's raw logprobs, as vLLM reports."""

    def __init__(self, top: int, named: tuple[int, ...] = ()) -> None:
        self.top = top
        # logprob_token_ids: the alternatives are these tokens, not the `top` most likely.
        self.named = named
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


class _Streamer:
    """transformers streamer protocol: `put` gets the prompt first, then each new token."""

    def __init__(self, job: _Job, tokenizer: Any, capture: _LogprobCapture | None) -> None:
        self._job = job
        self._tokenizer = tokenizer
        self._capture = capture
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        logprobs: tuple[TokenLogprob, ...] = ()
        if self._capture is not None and self._capture.last is not None:
            logprobs = tuple(self._score(token) for token in ids)
        self._job.put((ids, logprobs))

    def _score(self, token: int) -> TokenLogprob:
        assert self._capture is not None
        return _score(self._tokenizer, self._capture.last, token, self._capture.top, self._capture.named)

    def end(self) -> None:
        pass


def _score(tokenizer: Any, row: Any, token: int, top_k: int, named: tuple[int, ...] = ()) -> TokenLogprob:
    """A token's logprob in a log-softmax row (and its rank there), with the row's top_k alternatives (or the
    `named` tokens', in their order)."""
    top: tuple[tuple[str, float], ...] = ()
    ids: tuple[int, ...] = ()
    if named:
        ids = named
        top = tuple((tokenizer.decode([i]), float(row[i])) for i in named)
    elif top_k:
        values, indices = row.topk(top_k)
        ids = tuple(int(i) for i in indices.tolist())
        top = tuple((tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(), ids, strict=True))
    logprob = row[token]
    rank = int((row > logprob).sum()) + 1
    return TokenLogprob(tokenizer.decode([token]), float(logprob), top, token, rank, ids)


@dataclass(frozen=True)
class _PromptLogprobs:
    entries: tuple[TokenLogprob, ...]


class HfEngine(Engine):
    name = "hf"
    supports_logprobs = True

    def __init__(self, settings: HfSettings) -> None:
        self._settings = settings
        self._model: Any = None
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="hf-generate")
        self._jobs: dict[str, _Job] = {}
        # torch's RNG is process-global: seeded requests take turns so the seed alone decides their samples.
        self._seed_lock = threading.Lock()
        self._grammar_lock = threading.Lock()
        self._grammar_compiler: Any = None

    @property
    def model(self) -> ModelInfo:
        if self._info is None:
            raise EngineError("engine not started")
        return self._info

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = self._settings
        dtype = torch.float32 if s.dtype == "auto" else getattr(torch, s.dtype)
        self._tokenizer = AutoTokenizer.from_pretrained(s.model_path)
        self._model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=dtype)
        self._model.eval()
        native = int(getattr(self._model.config, "max_position_embeddings", 0) or 0) or 2048
        self._info = ModelInfo(
            name=s.served_model_name,
            path=s.model_path,
            max_model_len=min(s.max_model_len or native, native),
            created=int(time.time()),
        )

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if self._model is None:
            raise EngineError("engine not started")
        job = _Job(asyncio.get_running_loop())
        self._jobs[request.request_id] = job
        future = self._pool.submit(self._run, request, job)
        decoder = _IncrementalDecoder(self._tokenizer, request.sampling.stop, request.sampling.skip_special_tokens)
        stop_ids = self._stop_ids(request.sampling)
        produced = 0
        prompt_logprobs: tuple[TokenLogprob, ...] = ()
        try:
            while True:
                item = await job.queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise EngineError(f"transformers generation failed: {item}") from item
                if isinstance(item, _PromptLogprobs):
                    prompt_logprobs = item.entries
                    continue
                ids, logprobs = item
                produced += len(ids)
                text, stopped = decoder.add(ids)
                if stopped is not None:
                    job.stop.set()
                    yield EngineOutput(text, tuple(ids), "stop", logprobs, prompt_logprobs, stopped)
                    return
                finish = None
                if produced >= request.sampling.max_tokens:
                    finish = "length"
                elif ids and ids[-1] in stop_ids:
                    finish = "stop"
                if finish:
                    text += decoder.flush()
                # Every token goes out, even while its text is held back: usage and logprobs count it.
                yield EngineOutput(text, tuple(ids), finish, logprobs, prompt_logprobs)
                prompt_logprobs = ()  # they travel with the first output only
                if finish:
                    return
            # generate() returned without our finish condition (e.g. a model-specific stop): call it a stop.
            yield EngineOutput(text=decoder.flush(), token_ids=(), finish_reason="stop")
        finally:
            job.stop.set()
            self._jobs.pop(request.request_id, None)
            future.cancel()

    def _compiled(self, constraint: Constraint) -> Any:
        """xgrammar's grammar for a constraint (the backend vLLM uses too), compiled once per distinct one."""
        with self._grammar_lock:
            if self._grammar_compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=int(self._model.config.vocab_size)
                )
                self._grammar_compiler = xgrammar.GrammarCompiler(info, cache_enabled=True)
            return hf_logits.compile_constraint(self._grammar_compiler, constraint)

    def _stop_ids(self, o: SamplingOptions) -> set[int]:
        """Token ids that end generation: EOS (unless ignore_eos) and the request's stop_token_ids."""
        return (set() if _eos_ignored(o) else self._eos_ids()) | set(o.stop_token_ids)

    def _eos_ids(self) -> set[int]:
        ids = self._model.generation_config.eos_token_id
        if ids is None:
            ids = self._tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids])

    def _run(self, request: EngineRequest, job: _Job) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopFlag(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), job.stop.is_set(), dtype=torch.bool)

        if job.stop.is_set():  # aborted while queued
            job.put(_DONE)
            return
        o = request.sampling
        kwargs: dict[str, Any] = _generate_kwargs(o)
        kwargs["eos_token_id"] = sorted(self._stop_ids(o) or self._eos_ids())
        capture = _LogprobCapture(o.logprobs, o.logprob_token_ids) if o.logprobs is not None else None
        grammar = self._compiled(o.constraint) if o.constraint is not None else None
        processors = hf_logits.processors(
            o, len(request.prompt_token_ids), capture, grammar, self._stop_ids(o), self._eos_ids()
        )
        seeded = self._seed_lock if o.seed is not None else contextlib.nullcontext()
        try:
            if o.prompt_logprobs is not None:
                job.put(self._prompt_logprobs(request.prompt_token_ids, o.prompt_logprobs))
            with seeded, torch.inference_mode():
                if o.seed is not None:
                    torch.manual_seed(o.seed)
                self._model.generate(
                    input_ids=torch.tensor([request.prompt_token_ids]),
                    attention_mask=torch.ones(1, len(request.prompt_token_ids), dtype=torch.long),
                    streamer=_Streamer(job, self._tokenizer, capture),
                    stopping_criteria=StoppingCriteriaList([_StopFlag()]),
                    logits_processor=processors,
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                    **kwargs,
                )
        except Exception as exc:
            job.put(exc)
        job.put(_DONE)

    def _prompt_logprobs(self, ids: list[int], top_k: int) -> _PromptLogprobs:
        """One forward pass over the prompt: each token scored given the ones before it (the first can't be)."""
        import torch

        with torch.inference_mode():
            rows = torch.log_softmax(self._model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        scored = tuple(_score(self._tokenizer, rows[i - 1], ids[i], top_k) for i in range(1, len(ids)))
        return _PromptLogprobs((TokenLogprob(self._tokenizer.decode([ids[0]]), None, token_id=ids[0]), *scored))

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None:
            job.stop.set()

    def num_running(self) -> int:
        return len(self._jobs)

    async def check_health(self) -> None:
        if self._model is None:
            raise EngineError("engine not started")

    async def shutdown(self) -> None:
        for job in self._jobs.values():
            job.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


# As vLLM (its _SAMPLING_EPS): a temperature this small is greedy decoding; dividing logits by it would overflow.
GREEDY_BELOW = 1e-5


def _generate_kwargs(o: SamplingOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": o.max_tokens, "repetition_penalty": o.repetition_penalty}
    if o.temperature < GREEDY_BELOW:
        kwargs["do_sample"] = False
    else:
        # top_k 0 turns the warper off (None would mean the model's default, often 50); -1 is "off" too.
        kwargs.update(do_sample=True, temperature=o.temperature, top_p=o.top_p, top_k=max(o.top_k, 0))
        if o.min_p:
            kwargs["min_p"] = o.min_p
    if _eos_ignored(o):
        kwargs["min_new_tokens"] = o.max_tokens
    return kwargs


def _eos_ignored(o: SamplingOptions) -> bool:
    """ignore_eos, except under a schema: once the output is complete the grammar allows only EOS, and banning it
    too leaves no token at all (sampling fails on an all -inf row). vLLM ends such a request there as well."""
    return o.ignore_eos and o.constraint is None


class _IncrementalDecoder:
    """Token ids -> text deltas; holds back incomplete UTF-8 and text that may be the start of a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already returned

    def _text(self) -> str:
        return str(self._tokenizer.decode(self._ids, skip_special_tokens=self._skip_special_tokens))

    def add(self, ids: list[int]) -> tuple[str, str | None]:
        """Return (new text, the stop string that matched or None). Text from a stop string on is never
        returned."""
        self._ids.extend(ids)
        text = self._text()
        for s in self._stop:
            at = text.find(s)
            if at != -1:
                delta = text[self._emitted : at] if at > self._emitted else ""
                self._emitted = max(self._emitted, at)
                return delta, s
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        # Keep back a tail that could still grow into a stop string.
        for s in self._stop:
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe = min(safe, len(text[:safe]) - k)
                    break
        delta = text[self._emitted : safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return delta, None

    def flush(self) -> str:
        text = self._text()
        delta = text[self._emitted :]
        self._emitted = len(text)
        return delta
