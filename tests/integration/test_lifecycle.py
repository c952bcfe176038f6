"""Graceful drain on SIGTERM with live streams, and a dead engine taking the process down with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.client import convert
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, TEST_ENGINES, Service, running_service
from tests.support.error_rows import check_row

pytestmark = pytest.mark.integration

STORY = [{"role": "user", "content": "Write a story about the sea."}]


async def rest_stream(http: httpx.AsyncClient, max_tokens: int, started: asyncio.Event) -> list[str]:
    """The SSE `data:` payloads of one streamed chat; sets `started` at the first generated token."""
    body = {"model": MODEL_NAME, "messages": STORY, "stream": True, "max_tokens": max_tokens, "ignore_eos": True}
    events: list[str] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                if '"content":"' in line and '"content":""' not in line:
                    started.set()
    return events


async def grpc_stream(channel: grpc.aio.Channel, max_tokens: int, started: asyncio.Event) -> list[object]:
    call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(
        convert.chat_request(MODEL_NAME, STORY, {"max_tokens": max_tokens, "ignore_eos": True})
    )
    chunks = []
    async for chunk in call:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            started.set()
    return chunks


async def streams_under_way(
    channel: grpc.aio.Channel, http: httpx.AsyncClient
) -> tuple[asyncio.Future[list[str]], asyncio.Future[list[object]]]:
    """A REST and a gRPC stream of 1,500 tokens each, returned once both have generated their first token."""
    flags = [asyncio.Event(), asyncio.Event()]
    rest = asyncio.ensure_future(rest_stream(http, 1500, flags[0]))
    over_grpc = asyncio.ensure_future(grpc_stream(channel, 1500, flags[1]))
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 120)
    return rest, over_grpc


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def health_or_gone(channel: grpc.aio.Channel) -> int | None:
    """The server's overall health, or None when the server no longer takes calls (stopping or gone)."""
    try:
        return await health(channel)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
            return None
        raise


async def wait_exit(svc: Service, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (code := svc.process.poll()) is None:
        assert time.monotonic() < deadline, "chatgen serve did not exit"
        await asyncio.sleep(0.1)
    return code


@pytest.mark.parametrize("engine", TEST_ENGINES)
async def test_sigterm_refuses_new_requests_finishes_live_streams_then_exits_0(engine: str) -> None:
    with running_service(engine, "--shutdown-grace", "120") as svc:
        async with (
            grpc.aio.insecure_channel(svc.grpc_address) as channel,
            httpx.AsyncClient(base_url=svc.http_base, timeout=180) as http,
        ):
            flags = [asyncio.Event() for _ in range(3)]
            streams = [
                asyncio.ensure_future(rest_stream(http, 30, flags[0])),
                asyncio.ensure_future(rest_stream(http, 30, flags[1])),
                asyncio.ensure_future(grpc_stream(channel, 30, flags[2])),
            ]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 120)
            # What the server leaves on disk while it runs: Envoy's rendered config, and vLLM's engine-core
            # sockets in a directory of its own (vLLM's default, /tmp, keeps them after every exit).
            run_dir = Path(f"/tmp/chatgen-test-{os.getpid()}-{svc.grpc_address.rsplit(':', 1)[1]}")
            assert (run_dir / "envoy.json").is_file()
            ipc_dir = None
            if engine == "vllm":
                server = psutil.Process(svc.process.pid)
                sockets = {Path(c.laddr) for c in server.net_connections(kind="unix") if c.laddr}
                assert len({path.parent for path in sockets}) == 1, sockets
                ipc_dir = sockets.pop().parent
                assert ipc_dir.name.startswith("chatgen-vllm-ipc-") and any(ipc_dir.iterdir()), ipc_dir

            svc.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while await health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # Out of rotation (readiness), but alive: a liveness probe must not kill a replica while it drains.
            assert await health(channel, "liveness") == health_pb2.HealthCheckResponse.SERVING

            refused = await http.post(
                "/v1/chat/completions",
                json={"model": MODEL_NAME, "messages": STORY, "max_tokens": 2},
            )
            assert refused.status_code == 503
            check_row("draining", refused.json()["error"])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    convert.chat_request(MODEL_NAME, STORY, {"max_tokens": 2})
                )
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE

            rest_a, rest_b, grpc_chunks = await asyncio.wait_for(asyncio.gather(*streams), 120)
        # Every live stream ran to its end: all 30 tokens, finish_reason, and the SSE terminator.
        for events in (rest_a, rest_b):
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert all("error" not in c for c in chunks)
        assert grpc_chunks[-1].choices[0].finish_reason == "length"  # type: ignore[attr-defined]
        assert await wait_exit(svc, 60) == 0
        # A clean exit leaves nothing behind.
        assert not run_dir.exists()
        assert ipc_dir is None or not ipc_dir.exists()


def engine_core(pid: int) -> psutil.Process:
    for child in psutil.Process(pid).children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no vLLM EngineCore process under chatgen serve")


def alive(pid: int, created: float) -> bool:
    """Whether the process `pid` that started at `created` still runs (a pid can be reused)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif("vllm" not in TEST_ENGINES, reason="only vLLM runs its engine in a separate process")
async def test_a_dead_engine_fails_requests_with_unavailable_and_the_process_exits() -> None:
    with running_service("vllm") as svc:
        async with (
            grpc.aio.insecure_channel(svc.grpc_address) as channel,
            httpx.AsyncClient(base_url=svc.http_base, timeout=180) as http,
        ):
            rest, over_grpc = await streams_under_way(channel, http)
            # Every process chatgen started (engine core, its worker, resource trackers, Envoy, the grammar
            # worker): none may outlive it.
            started = {p.pid: p.create_time() for p in psutil.Process(svc.process.pid).children(recursive=True)}
            assert len(started) >= 3, started

            killed_at = time.monotonic()
            engine_core(svc.process.pid).kill()

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(over_grpc, 30)
            failed_after = time.monotonic() - killed_at
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            # Out of rotation before the first caller heard of the failure: a probe sees NOT_SERVING, or nothing at
            # all once the server has stopped listening (it stops as soon as the failed calls are answered; on a
            # busy machine that can come first) — never SERVING.
            assert await health_or_gone(channel) in (health_pb2.HealthCheckResponse.NOT_SERVING, None)
            events = await asyncio.wait_for(rest, 30)
            assert events[-1] == "[DONE]"
            check_row("engine-down", json.loads(events[-2])["error"])

            # No new request hangs: refused while the process drains, then nothing listens any more.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    convert.chat_request(MODEL_NAME, STORY, {"max_tokens": 2}), timeout=30
                )
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await wait_exit(svc, 60) == 1
        exited_after = time.monotonic() - killed_at
        assert any("engine failed" in line for line in svc.log)
        # chatgen leaves its own resource tracker to exit by itself once chatgen has (so that it can still clean
        # up after it, reaper._own_resource_tracker): on a loaded machine that can take a moment after the exit.
        deadline = time.monotonic() + 10
        while (survivors := [pid for pid, c in started.items() if alive(pid, c)]) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not survivors, [psutil.Process(pid).cmdline() for pid in survivors]
        print(
            f"engine core killed: calls failed after {failed_after:.1f} s, chatgen exited 1 after {exited_after:.1f} s"
        )


@pytest.mark.parametrize("engine", TEST_ENGINES)
async def test_streams_still_running_when_the_grace_period_ends_get_an_error(engine: str) -> None:
    """SIGTERM with a 1 s grace period and streams far from done: each ends with UNAVAILABLE and the error JSON
    (gRPC) or an error event and [DONE] (REST), not a cut connection; the process exits 0."""
    with running_service(engine, "--shutdown-grace", "1") as svc:
        async with (
            grpc.aio.insecure_channel(svc.grpc_address) as channel,
            httpx.AsyncClient(base_url=svc.http_base, timeout=180) as http,
        ):
            rest, over_grpc = await streams_under_way(channel, http)
            signalled_at = time.monotonic()
            svc.process.send_signal(signal.SIGTERM)

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(over_grpc, 30)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            trailers = dict(info.value.trailing_metadata() or ())
            check_row("draining", json.loads(trailers["x-chatgen-error"])["error"])
            events = await asyncio.wait_for(rest, 30)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        check_row("draining", error)
        assert "shutting down" in error["message"]
        assert all("error" not in json.loads(e) for e in events[1:-2])
        assert await wait_exit(svc, 60) == 0
        print(
            f"grace 1 s: streams ended with their error and the process exited after "
            f"{time.monotonic() - signalled_at:.1f} s"
        )


async def test_a_second_sigterm_ends_the_drain_at_once() -> None:
    with running_service(TEST_ENGINES[-1], "--shutdown-grace", "120") as svc:
        async with httpx.AsyncClient(base_url=svc.http_base, timeout=180) as http:
            started = asyncio.Event()
            rest = asyncio.ensure_future(rest_stream(http, 1500, started))
            await asyncio.wait_for(started.wait(), 120)
            svc.process.send_signal(signal.SIGTERM)
            while not any("draining:" in line for line in svc.log):
                await asyncio.sleep(0.05)
            second_at = time.monotonic()
            svc.process.send_signal(signal.SIGTERM)
            events = await asyncio.wait_for(rest, 30)
        assert events[-1] == "[DONE]"
        check_row("draining", json.loads(events[-2])["error"])
        assert await wait_exit(svc, 30) == 0
        assert time.monotonic() - second_at < 15  # not the 120 s grace period
