"""Backpressure, queued deadlines, mid-stream deadlines and body limits, on a server with room for one request
running and one waiting (`--max-running 1 --max-waiting 1`) and a 64 KiB body limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from chatgen.client import convert
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, TEST_ENGINES, Service, running_service
from tests.support.error_rows import check_row

pytestmark = pytest.mark.integration

LONG = [{"role": "user", "content": "Write a very long story about the sea."}]
LONG_PARAMS = {"max_tokens": 1500, "ignore_eos": True}
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def limited() -> Iterator[Service]:
    # vLLM, the default engine: admission is engine-independent, and its scheduler is capped to match.
    with running_service(
        TEST_ENGINES[0], "--max-running", "1", "--max-waiting", "1", "--max-request-bytes", str(MAX_BODY)
    ) as svc:
        yield svc


def wait_for(service: Service, metric: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while service.metric(metric) != value:
        assert time.monotonic() < deadline, f"{metric} never reached {value}"
        time.sleep(0.05)


@pytest.fixture
async def one_running(limited: Service) -> AsyncIterator[grpc.aio.Channel]:
    """A long gRPC stream holds the only running slot for the duration of the test."""
    wait_for(limited, "chatgen_engine_running_requests", 0)
    async with grpc.aio.insecure_channel(limited.grpc_address) as channel:
        call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(
            convert.chat_request(MODEL_NAME, LONG, LONG_PARAMS)
        )
        await call.read()  # the role chunk: admitted
        wait_for(limited, "chatgen_admitted_slots", 1)
        yield channel
        call.cancel()
    wait_for(limited, "chatgen_engine_running_requests", 0)


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


async def test_a_full_queue_fails_fast_with_429_and_resource_exhausted(
    limited: Service, one_running: grpc.aio.Channel
) -> None:
    rejected_before = limited.metric("chatgen_requests_rejected_total")
    async with httpx.AsyncClient(base_url=limited.http_base, timeout=120) as http:
        waiting = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat_body()))
        await asyncio.to_thread(wait_for, limited, "chatgen_waiting_slots", 1)

        started = time.monotonic()
        over = await http.post("/v1/chat/completions", json=chat_body())
        assert time.monotonic() - started < 2  # fails fast, does not queue
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        assert "grpc-retry-pushback-ms" not in over.headers
        error = over.json()["error"]
        check_row("overloaded", error)
        assert "capacity" in error["message"]

        stub = pb_grpc.ChatServiceStub(one_running)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(convert.chat_request(MODEL_NAME, LONG, {"max_tokens": 2}))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
        assert limited.metric("chatgen_requests_rejected_total") - rejected_before == 2

        # The waiting request is still queued, not failed.
        assert not waiting.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def test_a_waiting_request_runs_when_the_slot_frees(limited: Service) -> None:
    wait_for(limited, "chatgen_engine_running_requests", 0)
    async with grpc.aio.insecure_channel(limited.grpc_address) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        first = stub.StreamChatCompletion(
            convert.chat_request(MODEL_NAME, LONG, {"max_tokens": 20, "ignore_eos": True})
        )
        await first.read()
        second = asyncio.ensure_future(
            stub.CreateChatCompletion(convert.chat_request(MODEL_NAME, LONG, {"max_tokens": 3}))
        )
        await asyncio.to_thread(wait_for, limited, "chatgen_waiting_slots", 1)
        while (chunk := await first.read()) is not grpc.aio.EOF:
            last = chunk
        assert last.choices[0].finish_reason == "length"
        reply = await asyncio.wait_for(second, 120)
        assert reply.usage.completion_tokens == 3


async def test_queued_requests_past_their_deadline_never_reach_the_engine(
    limited: Service, one_running: grpc.aio.Channel
) -> None:
    started_before = limited.metric("chatgen_engine_requests_total")
    stub = pb_grpc.ChatServiceStub(one_running)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateChatCompletion(convert.chat_request(MODEL_NAME, LONG, {"max_tokens": 2}), timeout=1.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    async with httpx.AsyncClient(base_url=limited.http_base, timeout=120) as http:
        reply = await http.post("/v1/chat/completions", json=chat_body(), headers={"x-request-timeout-ms": "700"})
    assert reply.status_code == 504
    assert reply.json()["error"]["type"] == "timeout_error"

    # Both left the queue when their deadline passed: neither was submitted to the engine.
    assert limited.metric("chatgen_waiting_slots") == 0
    assert limited.metric("chatgen_engine_requests_total") == started_before


def test_a_stream_past_its_deadline_ends_with_an_error_event(limited: Service) -> None:
    wait_for(limited, "chatgen_engine_running_requests", 0)
    aborted_before = limited.metric("chatgen_requests_aborted_total")
    body = {"model": MODEL_NAME, "messages": LONG, "stream": True, **LONG_PARAMS}
    events: list[str] = []
    with httpx.stream(
        "POST",
        f"{limited.http_base}/v1/chat/completions",
        json=body,
        headers={"x-request-timeout-ms": "2000"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "deadline_exceeded" and error["type"] == "timeout_error"
    assert any(json.loads(e)["choices"] and json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2])
    wait_for(limited, "chatgen_engine_running_requests", 0)
    assert limited.metric("chatgen_requests_aborted_total") - aborted_before == 1


def test_an_oversized_body_is_413_over_rest_and_resource_exhausted_over_grpc(limited: Service) -> None:
    huge = "word " * (MAX_BODY // 5 + 100)
    reply = httpx.post(
        f"{limited.http_base}/v1/chat/completions",
        json=chat_body(messages=[{"role": "user", "content": huge}]),
        timeout=60,
    )
    assert reply.status_code == 413
    error = reply.json()["error"]
    assert error["code"] == "request_too_large" and str(MAX_BODY) in error["message"]

    with grpc.insecure_channel(limited.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                convert.chat_request(MODEL_NAME, [{"role": "user", "content": huge}], {"max_tokens": 2}), timeout=30
            )
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    # The server goes on serving.
    assert httpx.post(f"{limited.http_base}/v1/chat/completions", json=chat_body(), timeout=60).status_code == 200
