"""chat.job.merge: n choices' streams interleaved as they come; the first failure or an early stop ends them all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from chatgen.chat.job import merge


def source(name: str, count: int, delay: float, fail_at: int | None = None, closed: list[str] | None = None):  # type: ignore[no-untyped-def]
    async def items() -> AsyncGenerator[str, None]:
        try:
            for i in range(count):
                if fail_at == i:
                    raise RuntimeError(f"{name} failed")
                await asyncio.sleep(delay)
                yield f"{name}{i}"
        finally:
            if closed is not None:
                closed.append(name)

    return items


async def test_items_come_interleaved_as_produced() -> None:
    out = [item async for item in merge([source("a", 3, 0.01), source("b", 3, 0.025)])]
    assert sorted(out) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert out.index("a2") < out.index("b2")  # the faster source is not held back by the slower one
    assert out.index("b0") < out.index("a2") or out.index("a1") < out.index("b1")


async def test_the_first_failure_stops_the_others() -> None:
    closed: list[str] = []
    with pytest.raises(RuntimeError, match="b failed"):
        async for _ in merge([source("a", 100, 0.01, closed=closed), source("b", 3, 0.01, fail_at=1, closed=closed)]):
            pass
    assert sorted(closed) == ["a", "b"]  # the slow source was closed too (its engine request aborted)


async def test_an_early_stop_closes_every_source() -> None:
    closed: list[str] = []
    merged = merge([source("a", 100, 0.01, closed=closed), source("b", 100, 0.01, closed=closed)])
    async with contextlib.aclosing(merged):
        assert (await anext(merged))[0] in "ab"
    assert sorted(closed) == ["a", "b"]
