"""chat.coalescing: a stream's engine outputs merged into fewer chunks, by count and by time, the first token and the
end never held; and a request's interval over the server's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from chatgen.chat.coalescing import StreamInterval, coalesce, merged
from chatgen.engine import EngineOutput
from chatgen.engine.base import TokenLogprob


def token(i: int, finish: str | None = None) -> EngineOutput:
    return EngineOutput(f"t{i} ", (i,), finish, logprobs=(TokenLogprob(f"t{i}", -float(i)),))


async def outputs(count: int, gap_s: float = 0.0, closed: list[bool] | None = None) -> AsyncGenerator[EngineOutput]:
    try:
        for i in range(count):
            if gap_s:
                await asyncio.sleep(gap_s)
            yield token(i, "length" if i == count - 1 else None)
    finally:
        if closed is not None:
            closed.append(True)


def chunks(interval: StreamInterval, count: int, gap_s: float = 0.0) -> list[EngineOutput]:
    async def run() -> list[EngineOutput]:
        return [out async for out in coalesce(outputs(count, gap_s), interval)]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("tokens", "count", "sizes"),
    [
        (1, 5, [1, 1, 1, 1, 1]),
        (4, 13, [1, 4, 4, 4]),
        # The end is never held: the last chunk has what was left.
        (4, 11, [1, 4, 4, 2]),
        (8, 2, [1, 1]),
        (100, 6, [1, 5]),
    ],
)
def test_chunks_hold_up_to_the_interval_first_and_last_at_once(tokens: int, count: int, sizes: list[int]) -> None:
    got = chunks(StreamInterval(tokens), count)
    assert [len(c.token_ids) for c in got] == sizes
    # Nothing lost, nothing reordered, and only the last chunk finishes.
    assert [t for c in got for t in c.token_ids] == list(range(count))
    assert "".join(c.text for c in got) == "".join(f"t{i} " for i in range(count))
    assert [lp.token for c in got for lp in c.logprobs] == [f"t{i}" for i in range(count)]
    assert [c.finish_reason for c in got] == [None] * (len(sizes) - 1) + ["length"]


def test_the_time_bound_sends_a_chunk_once_it_has_passed_however_few_tokens_it_holds() -> None:
    # A token every 20 ms, a chunk at least every 50 ms: about one chunk per three tokens, not one per 100.
    got = chunks(StreamInterval(100, ms=50), 13, gap_s=0.02)
    sizes = [len(c.token_ids) for c in got]
    assert sum(sizes) == 13 and sizes[0] == 1, sizes
    assert all(2 <= s <= 4 for s in sizes[1:-1]) and len(sizes) >= 4, sizes
    # Without the bound the same stream is two chunks.
    assert [len(c.token_ids) for c in chunks(StreamInterval(100), 13, gap_s=0.02)] == [1, 12]


def test_closing_the_coalesced_stream_closes_the_engines() -> None:
    async def run() -> list[bool]:
        closed: list[bool] = []
        stream = coalesce(outputs(50, closed=closed), StreamInterval(4))
        await anext(stream)
        await stream.aclose()
        return closed

    assert asyncio.run(run()) == [True]


def test_merged_keeps_the_prompt_logprobs_of_the_first_and_the_finish_of_the_last() -> None:
    prompt = (TokenLogprob("p", None),)
    first = EngineOutput("a", (1,), prompt_logprobs=prompt)
    last = EngineOutput("b", (2,), "stop", stop_sequence="STOP")
    out = merged([first, last])
    assert (out.text, out.token_ids, out.prompt_logprobs) == ("ab", (1, 2), prompt)
    assert (out.finish_reason, out.stop_sequence) == ("stop", "STOP")


def test_a_request_raises_the_servers_interval_and_never_lowers_it() -> None:
    server = StreamInterval(4, 20)
    assert server.raised_by(None, None) == server
    assert server.raised_by(8, None) == StreamInterval(8, 20)
    assert server.raised_by(2, 0) == server
    assert server.raised_by(1, 100) == StreamInterval(4, 100)
    # The engine may gather tokens itself only where no clock is watched.
    assert (StreamInterval(8).engine_tokens, StreamInterval(8, 50).engine_tokens) == (8, 1)
