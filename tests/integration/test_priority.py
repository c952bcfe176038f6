"""vLLM's `priority` on the real server: refused (400) where the server does not schedule by priority, and on one
started with --scheduling-policy priority, waiting requests run lowest priority first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL_NAME, Service, running_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def priority_service() -> Iterator[Service]:
    # One slot, so every other request waits in the admission queue, where priority orders it.
    with running_service("vllm", "--scheduling-policy", "priority", "--max-running", "1") as svc:
        yield svc


def completion(priority: int, **extra: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 4, "priority": priority, **extra}


CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": 3}


@pytest.mark.parametrize(("path", "body"), [("/v1/completions", completion(3)), ("/v1/chat/completions", CHAT)])
def test_a_priority_the_server_would_not_honour_is_a_400(service: Service, path: str, body: dict[str, object]) -> None:
    refused = httpx.post(f"{service.http_base}{path}", json=body, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority", refused.text
    assert "--scheduling-policy priority" in refused.json()["error"]["message"]
    assert httpx.post(f"{service.http_base}{path}", json={**body, "priority": 0}, timeout=60).status_code == 200


async def test_waiting_requests_run_by_priority(priority_service: Service) -> None:
    base = priority_service.http_base
    finished: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def run(tag: str, priority: int) -> None:
            reply = await client.post("/v1/completions", json=completion(priority))
            assert reply.status_code == 200, reply.text
            finished.append(tag)

        # The one slot is held by a long stream; the others queue behind it, the less urgent one first.
        async with client.stream(
            "POST", "/v1/completions", json=completion(0, max_tokens=120, ignore_eos=True, stream=True)
        ) as holder:
            lines = holder.aiter_lines()
            await anext(lines)  # admitted and generating
            low = asyncio.ensure_future(run("low", 10))
            await wait_for_waiting(priority_service, 1)
            high = asyncio.ensure_future(run("high", -10))
            await wait_for_waiting(priority_service, 2)
            async for _ in lines:
                pass
        await asyncio.gather(low, high)
    assert finished == ["high", "low"]


async def wait_for_waiting(service: Service, n: int) -> None:
    deadline = time.monotonic() + 30
    while service.metric("chatgen_waiting_slots") < n:
        assert time.monotonic() < deadline, "the request never queued"
        await asyncio.sleep(0.05)
