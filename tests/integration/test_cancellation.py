"""Dropped callers free the engine: cancelled gRPC streams and closed HTTP connections abort their requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import grpc
import httpx
import psutil
import pytest

from chatgen.client import convert
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, TEST_ENGINES, Service, running_service
from tests.support.error_rows import check_row

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


async def wait_metric(service: Service, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while service.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {service.metric(name)}, not {value}"
        await asyncio.sleep(0.05)


async def test_callers_that_leave_while_waiting_for_admission_never_reach_the_engine() -> None:
    """One slot, held by a long stream; 5 gRPC and 5 REST callers wait behind it and leave (cancel, closed
    connection) before it frees: none of them ever starts an engine request, and the queue empties."""
    with running_service(TEST_ENGINES[-1], "--max-running", "1", "--max-waiting", "16") as svc:
        started_before = svc.metric("chatgen_engine_requests_total")
        async with (
            grpc.aio.insecure_channel(svc.grpc_address) as channel,
            httpx.AsyncClient(base_url=svc.http_base, timeout=120, limits=httpx.Limits(max_connections=20)) as http,
        ):
            stub = pb_grpc.ChatServiceStub(channel)
            holder = stub.StreamChatCompletion(convert.chat_request(MODEL_NAME, LONG, PARAMS))
            await anext(aiter(holder))
            body = {"model": MODEL_NAME, "messages": LONG, "stream": True, **PARAMS}
            waiting = [stub.StreamChatCompletion(convert.chat_request(MODEL_NAME, LONG, PARAMS)) for _ in range(5)]
            rest = [asyncio.ensure_future(http.post("/v1/chat/completions", json=body)) for _ in range(5)]
            await wait_metric(svc, "chatgen_waiting_slots", 10)
            for call in waiting:
                call.cancel()
            for request in rest:
                request.cancel()  # closes its connection
            await wait_metric(svc, "chatgen_waiting_slots", 0)
            assert svc.metric("chatgen_engine_requests_total") - started_before == 1  # the holder only
            holder.cancel()
        await wait_metric(svc, "chatgen_engine_running_requests", 0)
        assert svc.metric("chatgen_engine_requests_total") - started_before == 1
        assert svc.metric("chatgen_requests_aborted_total") == 1


async def test_a_grpc_caller_that_stops_reading_loses_its_stream_and_frees_its_slot() -> None:
    """A caller that reads nothing more (no BDP probing, so its window stays at grpc's 64 KiB): once a chunk has
    waited --write-timeout for room, the call ends and its engine request is aborted, though the caller never
    reads again. When it does read, it gets what was sent, then DEADLINE_EXCEEDED."""
    with running_service(TEST_ENGINES[0], "--write-timeout", "2") as svc:
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(svc.grpc_address, options=options) as channel:
            call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(
                convert.chat_request(MODEL_NAME, LONG, {**PARAMS, "max_tokens": 1900})
            )
            await call.read()
            await wait_metric(svc, "chatgen_requests_aborted_total", 1, timeout=240)
            assert svc.metric("chatgen_engine_running_requests") == 0
            read = 0
            with pytest.raises(grpc.aio.AioRpcError) as info:
                while await asyncio.wait_for(call.read(), 30) is not grpc.aio.EOF:
                    read += 1
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "read nothing for 2 s" in (info.value.details() or "")
        check_row("slow-reader", json.loads(dict(info.value.trailing_metadata() or ())["x-chatgen-error"])["error"])
        # What a 64 KiB window holds, far from the 1,900 tokens asked for.
        assert 100 < read < 1500, read
        assert any("read nothing for 2 s" in line for line in svc.log)


# Within the static schema bounds, yet ≈ 5-20 s to compile here: six nested bounded repeats.
SLOW_TO_COMPILE = {
    "type": "object",
    "properties": {f"p{i}": {"type": "string", "pattern": "((a{1,30}){1,30}){1,30}"} for i in range(6)},
    "required": [f"p{i}" for i in range(6)],
}


def grammar_worker(server_pid: int, timeout: float = 60) -> psutil.Process:
    """The chatgen process's grammar compiler (chat.grammar): its one multiprocessing child that is no resource
    tracker."""
    deadline = time.monotonic() + timeout
    while True:
        for child in psutil.Process(server_pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                cmdline = " ".join(child.cmdline())
                if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
                    return child
        assert time.monotonic() < deadline, "no grammar worker"
        time.sleep(0.1)


def ends_within(process: psutil.Process, seconds: float) -> float:
    """Seconds until `process` is gone (or a zombie); fails after `seconds`."""
    start = time.monotonic()
    with contextlib.suppress(psutil.NoSuchProcess):
        while process.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() - start < seconds, f"the compile in {process.pid} ran on"
            time.sleep(0.05)
    return time.monotonic() - start


def with_schema(schema: dict[str, object]) -> dict[str, object]:
    return {"max_tokens": 3, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def quick(field: str) -> dict[str, object]:
    """A schema compiled in milliseconds, new for each field name (verdicts are remembered: a new one compiles)."""
    return with_schema({"type": "object", "properties": {field: {"type": "integer"}}})


async def test_a_compile_abandoned_by_its_caller_stops() -> None:
    """A schema that takes seconds to compile, under a generous --max-grammar-seconds: the REST caller that hangs up
    and the gRPC caller whose deadline passes each take the compile down with them (its worker is killed at once),
    the engine never sees the request, and the next schema is served by a fresh worker."""
    with running_service(TEST_ENGINES[-1], "--max-grammar-seconds", "120") as svc:
        with httpx.Client(base_url=svc.http_base, timeout=60) as http:

            def post(params: dict[str, object], timeout: float = 60) -> httpx.Response:
                body = {"model": MODEL_NAME, "messages": LONG, **params}
                return http.post("/v1/chat/completions", json=body, timeout=timeout)

            assert post(quick("a")).status_code == 200
            requests_before = svc.metric("chatgen_engine_requests_total")
            worker = grammar_worker(svc.process.pid)
            with pytest.raises(httpx.ReadTimeout):
                post(with_schema(SLOW_TO_COMPILE), timeout=1.5)
            print(f"REST hang-up: the compile ended {ends_within(worker, 5):.2f} s after")
            assert post(quick("b")).status_code == 200
        worker = grammar_worker(svc.process.pid)
        async with grpc.aio.insecure_channel(svc.grpc_address) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateChatCompletion(
                    convert.chat_request(MODEL_NAME, LONG, with_schema(SLOW_TO_COMPILE)), timeout=1.5
                )
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            print(f"gRPC deadline: the compile ended {ends_within(worker, 5):.2f} s after")
            reply = await stub.CreateChatCompletion(convert.chat_request(MODEL_NAME, LONG, quick("c")))
            assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens >= 1
        # The two quick requests after the first reached the engine; neither slow one did.
        assert svc.metric("chatgen_engine_requests_total") - requests_before == 2
