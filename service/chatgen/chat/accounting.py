"""What one call cost, filled in by the chat layer as the request runs and read by whoever records the call
(the transport's call log: metrics and the request log line).

The record travels in a context variable, as a tracing span does: the transport binds one per RPC, the chat
layer writes into `current()`, and neither reaches into the other's objects. Tasks the chat layer starts for a
request (its choices when n > 1) inherit the variable, so they write into the same record.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field


@dataclass
class RequestStats:
    started: float = field(default_factory=time.perf_counter)
    # Set once the request has passed validation.
    model: str | None = None
    completion_id: str | None = None
    n: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # time.perf_counter() when the first output carrying tokens arrived (any choice).
    first_token_at: float | None = None

    @property
    def ttft(self) -> float | None:
        return self.first_token_at - self.started if self.first_token_at is not None else None


_current: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar("chatgen_request_stats", default=None)


def bind(stats: RequestStats) -> None:
    """Make `stats` the record of what is run from this context on (an RPC's task: its context ends with it)."""
    _current.set(stats)


def current() -> RequestStats:
    """The record bound for this call; a fresh one nobody reads where none is (direct use of the chat layer)."""
    stats = _current.get()
    return stats if stats is not None else RequestStats()
