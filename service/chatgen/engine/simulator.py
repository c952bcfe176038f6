"""TOKEN SIMULATOR — a fake engine for load and soak tests only. It runs no model.

It tokenizes with the served model's real tokenizer (so chat templates, validation and usage are the real ones)
and then "generates" a fixed passage, one token per `itl_ms` after `ttft_ms`, with no compute at all. That makes
the serving stack (gRPC, Envoy, admission, cancellation) the only thing a load test measures, and makes runs
reproducible. `chatgen serve --engine simulator` prints a warning; /v1/models reports the engine as usual, so
never point real users at it. Sampling options other than max_tokens / ignore_eos are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from chatgen.engine.base import Engine, EngineError, EngineOutput, EngineRequest, ModelInfo

log = logging.getLogger(__name__)

PASSAGE = (
    "This is simulated output from the chatgen token simulator. No model produced it; every token arrives on a "
    "fixed schedule so that load tests measure the serving stack alone. "
)


@dataclass(frozen=True)
class SimulatorSettings:
    tokenizer_path: str
    served_model_name: str
    max_model_len: int = 2048
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    # Tokens a request gets before finishing with "stop" (unless max_tokens ends it first, or ignore_eos is set).
    output_tokens: int = 64


class TokenSimulatorEngine(Engine):
    name = "simulator"

    def __init__(self, settings: SimulatorSettings) -> None:
        self._settings = settings
        self._tokenizer: Any = None
        self._model: ModelInfo | None = None
        self._passage: list[int] = []
        self._running: set[str] = set()

    @property
    def model(self) -> ModelInfo:
        if self._model is None:
            raise EngineError("engine not started")
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def start(self) -> None:
        from transformers import AutoTokenizer

        s = self._settings
        log.warning("TOKEN SIMULATOR engine: no model runs; for load tests only")
        self._tokenizer = AutoTokenizer.from_pretrained(s.tokenizer_path)
        self._passage = list(self._tokenizer.encode(PASSAGE, add_special_tokens=False))
        self._model = ModelInfo(s.served_model_name, s.tokenizer_path, s.max_model_len, int(time.time()))

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        s = self._settings
        o = request.sampling
        total = o.max_tokens if o.ignore_eos else min(o.max_tokens, s.output_tokens)
        finish = "length" if total == o.max_tokens else "stop"
        self._running.add(request.request_id)
        try:
            await asyncio.sleep(s.ttft_ms / 1000)
            started = time.monotonic()
            for i in range(total):
                # Sleep to a fixed timetable, not a fixed gap, so slow consumers do not stretch it.
                delay = started + i * s.itl_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if request.request_id not in self._running:
                    return  # aborted
                token = self._passage[i % len(self._passage)]
                yield EngineOutput(self._tokenizer.decode([token]), (token,), finish if i == total - 1 else None)
        finally:
            self._running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        self._running.discard(request_id)

    def num_running(self) -> int:
        return len(self._running)

    async def check_health(self) -> None:
        if self._model is None:
            raise EngineError("engine not started")

    async def shutdown(self) -> None:
        self._running.clear()
