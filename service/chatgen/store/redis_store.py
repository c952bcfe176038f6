"""The response store for many replicas: Redis (redis-py's asyncio client). Each response is a hash under
`chatgen:response:<id>` that expires after the store's max age; the size bound is Redis's own (`maxmemory` with
an eviction policy), which a shared Redis is configured with anyway."""

from __future__ import annotations

import math
import urllib.parse

from chatgen.store.base import ResponseStore, StoredResponse, StoreLimits

_PREFIX = "chatgen:response:"
_FIELDS = ("owner", "created_at", "response_json", "input_items_json")


class RedisStore(ResponseStore):
    def __init__(self, url: str, limits: StoreLimits) -> None:
        import redis.asyncio

        self.url = url
        self._limits = limits
        self._redis = redis.asyncio.Redis.from_url(url, decode_responses=True)

    @property
    def where(self) -> str:
        # The URL without its password.
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme == "unix":
            return f"Redis unix://{parsed.path}"
        return f"Redis {parsed.scheme}://{parsed.hostname}:{parsed.port or 6379}{parsed.path}"

    async def put(self, record: StoredResponse) -> None:
        key = _PREFIX + record.id
        fields = {
            "owner": record.owner,
            "created_at": repr(record.created_at),
            "response_json": record.response_json,
            "input_items_json": record.input_items_json,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, max(1, math.ceil(self._limits.max_age_seconds)))
            await pipe.execute()

    async def get(self, response_id: str) -> StoredResponse | None:
        values = await self._redis.hmget(_PREFIX + response_id, list(_FIELDS))
        if values[0] is None:
            return None
        owner, created_at, response_json, input_items_json = (str(v) for v in values)
        return StoredResponse(response_id, owner, float(created_at), response_json, input_items_json)

    async def delete(self, response_id: str) -> bool:
        return bool(await self._redis.delete(_PREFIX + response_id))

    async def close(self) -> None:
        await self._redis.aclose()
