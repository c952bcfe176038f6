"""Stream coalescing: a stream's engine outputs merged into fewer, fuller chunks (vLLM's `--stream-interval`,
with a time bound of chatgen's own).

Every chunk of a stream costs the serving process about the same whatever it holds (a message built, written and
completed on the event loop, and relayed by Envoy), so a stream that carries several tokens a chunk costs less
CPU per token. The first token is always sent at once (time to first token is unchanged) and the last output is
never held back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from chatgen.engine import EngineOutput


@dataclass(frozen=True)
class StreamInterval:
    """At most one chunk per `tokens` tokens, or sooner once `ms` milliseconds have passed since the last chunk
    (0: no time bound), whichever comes first; tokens 1: every token as it comes."""

    tokens: int = 1
    ms: int = 0

    def raised_by(self, tokens: int | None, ms: int | None) -> StreamInterval:
        """This (the server's setting) raised by a request's: as vLLM clamps a request's stream_interval up to
        the server's, a request can ask for fuller chunks, never for more of them."""
        return StreamInterval(max(self.tokens, tokens or 1), max(self.ms, ms or 0))

    @property
    def engine_tokens(self) -> int:
        """Tokens the engine itself may gather into one output (vLLM's SamplingParams.stream_interval, which
        spares its output processor the outputs in between): all of them when there is no time bound; with one,
        the engine sends each token, and coalesce() watches the clock, since an engine's held tokens wait for
        the count alone."""
        return self.tokens if self.ms == 0 else 1


async def coalesce(
    outputs: AsyncGenerator[EngineOutput, None], interval: StreamInterval
) -> AsyncGenerator[EngineOutput, None]:
    """`outputs` merged as `interval` says. A held output waits for a later one: the time bound is checked as
    outputs arrive, so a chunk goes out at most `ms` plus one inter-token gap after the last. Closing this
    iterator closes `outputs` (aborting the engine request)."""
    async with contextlib.aclosing(outputs):
        if interval.tokens <= 1:
            async for out in outputs:
                yield out
            return
        held: list[EngineOutput] = []
        tokens = 0
        last_sent: float | None = None
        bound = interval.ms / 1000
        async for out in outputs:
            held.append(out)
            tokens += len(out.token_ids)
            now = time.perf_counter()
            if (
                last_sent is None
                or out.finish_reason is not None
                or tokens >= interval.tokens
                or (bound and now - last_sent >= bound)
            ):
                yield merged(held)
                held, tokens, last_sent = [], 0, now
        if held:
            # The engine ended without a last output (an aborted request): what it made still goes out.
            yield merged(held)


def merged(outputs: list[EngineOutput]) -> EngineOutput:
    """Consecutive outputs of one request as one: their text, tokens and logprobs in order; the finish (and its
    stop string) of the last; the prompt's logprobs, which come with the first."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    return EngineOutput(
        text="".join(o.text for o in outputs),
        token_ids=tuple(t for o in outputs for t in o.token_ids),
        finish_reason=last.finish_reason,
        logprobs=tuple(lp for o in outputs for lp in o.logprobs),
        prompt_logprobs=next((o.prompt_logprobs for o in outputs if o.prompt_logprobs), ()),
        stop_sequence=last.stop_sequence,
    )
