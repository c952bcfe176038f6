"""The response store's interface, its records and its bounds."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredResponse:
    """A stored response: the Response as its JSON, the conversation it answered (its input items, JSON) and whose
    it is (a digest of the caller's API key; "" where the server has no keys)."""

    id: str
    owner: str
    created_at: float
    response_json: str
    input_items_json: str

    @property
    def size(self) -> int:
        return len(self.response_json) + len(self.input_items_json)


@dataclass(frozen=True)
class StoreLimits:
    """How much a store keeps: responses older than `max_age_seconds` are dropped, and the oldest go first when
    the stored JSON passes `max_bytes`."""

    max_age_seconds: float = 30 * 24 * 3600.0
    max_bytes: int = 1 << 30


class ResponseStore(abc.ABC):
    """Responses by id. Every call is a coroutine: the database is never read on the event loop's thread."""

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The store, for the start-up log (no credentials)."""

    @abc.abstractmethod
    async def put(self, record: StoredResponse) -> None: ...

    @abc.abstractmethod
    async def get(self, response_id: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    async def delete(self, response_id: str) -> bool:
        """Whether there was one to delete."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def open_store(url: str | None, cache_dir: Path, limits: StoreLimits) -> ResponseStore:
    """The store `url` names: None or a path for SQLite (default: responses.sqlite3 under `cache_dir`), or
    redis://... ."""
    if url is not None and url.startswith(("redis://", "rediss://", "unix://")):
        from chatgen.store.redis_store import RedisStore

        return RedisStore(url, limits)
    from chatgen.store.sqlite_store import SqliteStore

    path = Path(url.removeprefix("sqlite://")) if url else cache_dir / "responses.sqlite3"
    return SqliteStore(path, limits)
