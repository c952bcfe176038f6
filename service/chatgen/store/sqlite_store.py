"""The default response store: one SQLite file (WAL, so that reads do not wait on a write), bounded by age and
size, used from one worker thread (sqlite3 connections belong to the thread that made them)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from chatgen.store.base import ResponseStore, StoredResponse, StoreLimits

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    response_json TEXT NOT NULL,
    input_items_json TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


class SqliteStore(ResponseStore):
    def __init__(self, path: Path, limits: StoreLimits) -> None:
        self.path = path
        self._limits = limits
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatgen-store")
        self._db: sqlite3.Connection | None = None

    @property
    def where(self) -> str:
        return f"SQLite {self.path}"

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def put(self, record: StoredResponse) -> None:
        await self._run(self._put, record)

    def _put(self, r: StoredResponse) -> None:
        db = self._connection()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (r.id, r.owner, r.created_at, r.response_json, r.input_items_json, r.size),
            )
            db.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self._limits.max_age_seconds,))
            (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
            if total > self._limits.max_bytes:
                # The oldest first, until the rest fits.
                rows = db.execute("SELECT id, size FROM responses ORDER BY created_at").fetchall()
                drop = []
                for response_id, size in rows:
                    if total <= self._limits.max_bytes:
                        break
                    drop.append((response_id,))
                    total -= size
                db.executemany("DELETE FROM responses WHERE id = ?", drop)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._run(self._get, response_id)  # type: ignore[no-any-return]

    def _get(self, response_id: str) -> StoredResponse | None:
        row = (
            self._connection()
            .execute(
                "SELECT id, owner, created_at, response_json, input_items_json FROM responses WHERE id = ?"
                " AND created_at >= ?",
                (response_id, time.time() - self._limits.max_age_seconds),
            )
            .fetchone()
        )
        return StoredResponse(*row) if row is not None else None

    async def delete(self, response_id: str) -> bool:
        return await self._run(self._delete, response_id)  # type: ignore[no-any-return]

    def _delete(self, response_id: str) -> bool:
        db = self._connection()
        with db:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._thread.shutdown(wait=False)
