"""The benchmark's bare HTTP client against a real uvicorn server (what `vllm serve` runs on): a kept-alive
connection the server closed while idle is not a failed request, and a request that never gets an answer is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from benchmarks.clients import RawHttp, sse_chat, sse_post
from benchmarks.workload import Request

REQUEST = Request(({"role": "user", "content": "hi"},), max_tokens=2)


async def sse_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A chat stream of two content chunks and a usage chunk, as an OpenAI server sends it."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    chunks = [{"choices": [{"delta": {"content": word}}]} for word in ("Hel", "lo")]
    chunks.append({"choices": [], "usage": {"completion_tokens": 2}})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@contextlib.asynccontextmanager
async def uvicorn_server(keep_alive_s: float) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(sse_app, timeout_keep_alive=keep_alive_s, log_level="warning")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


def test_a_connection_the_server_closed_while_idle_is_resent_once_and_counted_apart() -> None:
    async def scenario() -> None:
        async with uvicorn_server(keep_alive_s=0.2) as port:
            client = RawHttp("127.0.0.1", port, "m")
            first = await client.chat(REQUEST)
            reused = await client.chat(REQUEST)  # at once: the kept-alive connection still open
            await asyncio.sleep(0.6)  # uvicorn closes the idle connection meanwhile
            after_close = await client.chat(REQUEST)
            client.close()
        for result in (first, reused, after_close):
            assert (result.ok, result.error, result.output_tokens, len(result.itls)) == (True, None, 2, 1)
        assert [r.reconnected for r in (first, reused, after_close)] == [False, False, True]

    asyncio.run(scenario())


def test_ttft_counts_from_the_request_not_from_the_response_headers() -> None:
    """A server that sends its headers with its first token, 0.3 s after the request (as Envoy does for a gRPC
    stream, and SMG), has a TTFT of 0.3 s."""

    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (await reader.readline()).strip():
                pass
            await reader.read(1)  # the body has arrived (a few bytes of it)
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for chunk in (
                {"choices": [{"delta": {"content": "Hi"}}]},
                {"choices": [], "usage": {"completion_tokens": 1}},
            ):
                event = f"data: {json.dumps(chunk)}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        client = RawHttp("127.0.0.1", server.sockets[0].getsockname()[1], "m")
        result = await client.chat(REQUEST)
        client.close()
        server.close()
        await server.wait_closed()
        assert (result.ok, result.error, result.output_tokens) == (True, None, 1)
        assert 0.3 <= result.ttft < 1.0

    asyncio.run(scenario())


@pytest.mark.parametrize("reuse", [False, True])
def test_a_server_that_closes_without_answering_fails_the_request(reuse: bool) -> None:
    """A fresh connection closed before any byte is a failure ('http ?'), not retried forever."""

    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawHttp("127.0.0.1", port, "m")
        if reuse:  # an idle connection to it too: resent once, then failed
            client.idle.append(await asyncio.open_connection("127.0.0.1", port))
        result = await client.chat(REQUEST)
        client.close()
        server.close()
        await server.wait_closed()
        assert (result.ok, result.error, result.reconnected) == (False, "http ?", reuse)

    asyncio.run(scenario())


def test_openai_body_sends_stream_interval_only_above_one() -> None:
    from dataclasses import replace

    from benchmarks.clients import openai_body

    assert "stream_interval" not in openai_body("m", REQUEST)
    assert openai_body("m", replace(REQUEST, stream_interval=8))["stream_interval"] == 8


def test_coalesced_sender_sets_the_interval_on_every_request() -> None:
    from benchmarks.bench_serving import coalesced
    from benchmarks.clients import Result

    seen: list[int] = []

    async def send(request: Request) -> Result:
        seen.append(request.stream_interval)
        return Result(ok=True)

    asyncio.run(coalesced(send, 4)(REQUEST))
    assert seen == [4]
    assert REQUEST.stream_interval == 1


def test_the_httpx_stream_client_sends_the_body_as_given_and_times_the_events() -> None:
    """sse_post (benchmarks.affinity's client; sse_chat builds its body) over httpx against the real uvicorn app."""

    async def scenario() -> None:
        async with uvicorn_server(keep_alive_s=5) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "user": "k"}
                posted = await sse_post(http, body)
                chat = await sse_chat(http, "m", REQUEST)
            async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as http:
                refused = await sse_post(http, body)
        for result in (posted, chat):
            assert (result.ok, result.error, result.output_tokens, len(result.itls)) == (True, None, 2, 1)
        assert (refused.ok, refused.error) == (False, "ConnectError")

    asyncio.run(scenario())
