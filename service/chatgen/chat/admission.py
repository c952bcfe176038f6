"""Admission control: a bounded number of engine requests run, a bounded number wait, the rest are turned away.

Without a bound every caller's request would be queued inside the engine, holding memory and a connection while
its latency grows without limit. Here a request holds one slot per choice (`n`) while it runs; when all
`max_running` slots are taken it waits (first come, first served; by `priority` first, lower earlier, where the
server schedules by priority) for up to `max_waiting` slots' worth of other requests; beyond that it fails at once
with RESOURCE_EXHAUSTED / HTTP 429 and a Retry-After. A waiting request whose caller gives up (cancel, disconnect,
deadline) leaves the queue without ever reaching the engine.

Draining (SIGTERM, a dead engine) turns new requests away with UNAVAILABLE / 503 and lets the admitted ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from chatgen.errors import ApiError, Failure

# What an overloaded server suggests to callers: long enough for a few requests to finish.
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class AdmissionLimits:
    max_running: int = 32
    max_waiting: int = 224

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_waiting < 0:
            raise ValueError("max_running must be at least 1 and max_waiting at least 0")


class Admission:
    def __init__(self, limits: AdmissionLimits, on_reject: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._on_reject = on_reject
        self._running = 0
        # (priority, arrival, slots, granted): a heap, so the head is the lowest priority, first come among equals.
        self._queue: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._waiting = 0
        self._draining: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def drain(self, reason: str) -> None:
        """From now on turn new requests away (UNAVAILABLE) with `reason`; admitted and waiting ones go on."""
        self._draining = reason

    def stop(self, err: ApiError) -> None:
        """Turn new requests away and fail every waiting one with `err` (the drain's grace period is over)."""
        self._draining = err.message
        while self._queue:
            _, _, n, granted = heapq.heappop(self._queue)
            self._waiting -= n
            if not granted.done():
                granted.set_exception(err)
        if self._running == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is running or waiting."""
        await self._idle.wait()

    @contextlib.asynccontextmanager
    async def slots(self, n: int, priority: int = 0) -> AsyncIterator[None]:
        """Hold `n` slots for the duration of the block, waiting for them if the queue has room (ahead of the
        waiting requests of a higher `priority` value)."""
        if self._draining is not None:
            raise ApiError(Failure.SHUTTING_DOWN, self._draining)
        if n > self.limits.max_running:
            # Validation keeps `n` within max_running (ServedModel.max_choices); more could never be admitted.
            raise ValueError(f"{n} slots asked of {self.limits.max_running}")
        if self._running + n <= self.limits.max_running and not self._queue:
            self._take(n)
        elif self._waiting + n <= self.limits.max_waiting:
            await self._wait(n, priority)
        else:
            if self._on_reject is not None:
                self._on_reject()
            raise ApiError(
                Failure.OVERLOADED,
                f"The server is at capacity ({self._running} running, {self._waiting} waiting); retry later",
                retry_after=RETRY_AFTER_SECONDS,
            )
        try:
            yield
        finally:
            self._release(n)

    def _take(self, n: int) -> None:
        self._running += n
        self._idle.clear()

    async def _wait(self, n: int, priority: int) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._arrivals), n, granted)
        heapq.heappush(self._queue, entry)
        self._waiting += n
        self._idle.clear()
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                # The slots were granted just as the caller gave up: hand them on.
                self._release(n)
            elif entry in self._queue:
                self._queue.remove(entry)
                heapq.heapify(self._queue)
                self._waiting -= n
                self._admit_waiting()
            # Otherwise slots were freed after the caller was cancelled but before it ran: _admit_waiting already
            # dropped the entry (and its count) without granting it.
            raise

    def _release(self, n: int) -> None:
        self._running -= n
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._queue and self._running + self._queue[0][2] <= self.limits.max_running:
            _, _, n, granted = heapq.heappop(self._queue)
            self._waiting -= n
            if granted.done():
                # Its caller was cancelled and has not run since: it leaves the queue, ungranted.
                continue
            self._take(n)
            granted.set_result(None)
        if self._running == 0 and not self._queue:
            self._idle.set()
