"""The response stores against real databases: a SQLite file and a real redis-server — the same contract for
both (put, get, delete, owners kept), and each one's bounds (age for both, size for SQLite)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatgen.store import ResponseStore, StoredResponse, StoreLimits, open_store
from tests.support.redis import redis_server


def record(rid: str, size: int = 10, age: float = 0.0, owner: str = "") -> StoredResponse:
    return StoredResponse(rid, owner, time.time() - age, "r" * size, "[]")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else str(tmp_path / "r.sqlite3")
    opened = open_store(url, tmp_path, StoreLimits())
    yield opened
    await opened.close()


async def test_put_get_delete(store: ResponseStore) -> None:
    rid = f"resp_{time.monotonic_ns()}"
    assert await store.get(rid) is None
    kept = StoredResponse(rid, "owner-digest", time.time(), '{"id": "x"}', '[{"type": "message"}]')
    await store.put(kept)
    got = await store.get(rid)
    assert got is not None and (got.id, got.owner, got.response_json, got.input_items_json) == (
        rid,
        "owner-digest",
        '{"id": "x"}',
        '[{"type": "message"}]',
    )
    assert await store.delete(rid) is True
    assert await store.get(rid) is None and await store.delete(rid) is False


def test_where_names_the_store_without_credentials(tmp_path: Path) -> None:
    assert open_store(None, tmp_path, StoreLimits()).where == f"SQLite {tmp_path / 'responses.sqlite3'}"
    assert open_store("redis://:secret@db:6380/2", tmp_path, StoreLimits()).where == "Redis redis://db:6380/2"


async def test_sqlite_drops_old_responses_and_the_oldest_past_its_size(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.sqlite3"), tmp_path, StoreLimits(max_age_seconds=60, max_bytes=100))
    try:
        await store.put(record("old", age=120))
        assert await store.get("old") is None  # past the age bound: gone even before a sweep
        for k in range(3):
            await store.put(record(f"r{k}", size=40, age=30 - k))
        # 3 x 42 bytes > 100: the oldest went; the two newest fit.
        assert [await store.get(f"r{k}") is not None for k in range(3)] == [False, True, True]
    finally:
        await store.close()


async def test_redis_expires_after_the_max_age(redis_url: str, tmp_path: Path) -> None:
    import redis.asyncio

    store = open_store(redis_url, tmp_path, StoreLimits(max_age_seconds=100))
    try:
        await store.put(record("ttl"))
        ttl = await redis.asyncio.Redis.from_url(redis_url).ttl("chatgen:response:ttl")
        assert 90 <= ttl <= 100
    finally:
        await store.close()
