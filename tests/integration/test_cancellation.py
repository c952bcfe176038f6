"""Dropped callers free the engine: cancelled gRPC streams and closed HTTP connections abort their requests."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from chatgen.client import convert
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

LONG = [{"role": "user", "content": "Write a very long story about the sea."}]
PARAMS = {"max_tokens": 1500, "ignore_eos": True, "temperature": 1.0}


def wait_idle(service: Service, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while (running := service.metric("chatgen_engine_running_requests")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


async def test_dropped_streams_leave_no_engine_request(service: Service) -> None:
    assert wait_idle(service) == 0
    aborted_before = service.metric("chatgen_requests_aborted_total")

    async def grpc_stream(channel: grpc.aio.Channel) -> None:
        call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(convert.chat_request(MODEL_NAME, LONG, PARAMS))
        async for chunk in call:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # one real token arrived: the request is running in the engine
        call.cancel()

    async def rest_stream(http: httpx.AsyncClient) -> None:
        body = {"model": MODEL_NAME, "messages": LONG, "stream": True, **PARAMS}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
        # Leaving the block closes the connection mid-stream.

    async with grpc.aio.insecure_channel(service.grpc_address) as channel:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=service.http_base, timeout=120, limits=limits) as http:
            await asyncio.gather(*[grpc_stream(channel) for _ in range(10)], *[rest_stream(http) for _ in range(10)])

    # Each of the 20 requests wanted 1500 tokens; none may keep the engine busy.
    assert wait_idle(service) == 0
    assert service.metric("chatgen_requests_aborted_total") - aborted_before == 20
    # And the server still answers.
    reply = httpx.post(
        f"{service.http_base}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        timeout=120,
    )
    assert reply.status_code == 200


def test_rest_timeout_header_is_the_grpc_deadline(service: Service) -> None:
    assert wait_idle(service) == 0
    aborted_before = service.metric("chatgen_requests_aborted_total")
    started = time.monotonic()
    response = httpx.post(
        f"{service.http_base}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": LONG, **PARAMS},
        headers={"x-request-timeout-ms": "800"},
        timeout=120,
    )
    assert time.monotonic() - started < 10
    assert response.status_code == 504
    # The server ends the call just before the deadline, with its own message (as for a stream already under way).
    assert response.json() == {
        "error": {
            "message": "The request's timeout passed before it finished",
            "type": "timeout_error",
            "param": None,
            "code": "deadline_exceeded",
        }
    }
    assert wait_idle(service) == 0
    assert service.metric("chatgen_requests_aborted_total") - aborted_before == 1


def test_grpc_deadline_aborts_the_engine_request(service: Service) -> None:
    assert wait_idle(service) == 0
    aborted_before = service.metric("chatgen_requests_aborted_total")
    with grpc.insecure_channel(service.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                convert.chat_request(MODEL_NAME, LONG, PARAMS), timeout=0.8
            )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_idle(service) == 0
    assert service.metric("chatgen_requests_aborted_total") - aborted_before == 1
