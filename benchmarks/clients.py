"""One streamed chat completion, timed, over OpenAI REST/SSE (vLLM's server, chatgen via Envoy) or chatgen gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.workload import Request


@dataclass
class Result:
    ok: bool
    # Seconds from sending to the first content token, and between content chunks after it.
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    latency: float = 0.0
    output_tokens: int = 0
    error: str | None = None
    # The request went out again on a new connection: the kept-alive one it was first sent on had been closed by
    # the server meanwhile, before any byte of a response (not a failure; counted apart).
    reconnected: bool = False


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """While measuring, keep the benchmark's own start-up objects (torch, transformers, vLLM, the workload:
    ≈ 370,000) out of its garbage collector's reach, as vLLM's benchmark does (`vllm bench serve`): a full
    collection of them stops this process's event loop for ≈ 150 ms, every stream in flight stalled, and the
    clients that allocate the most Python objects per chunk (the HTTP ones) trigger collections most often."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        # Frozen objects are never collected, not even at exit, where triton's nanobind reports them as leaks.
        gc.unfreeze()


class Timer:
    """Times one streamed request: TTFT at the first content chunk, then the gaps between content chunks."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last: float | None = None
        self.result = Result(ok=True)

    def content(self, now: float | None = None) -> None:
        """A content chunk arrived (at `now`, a perf_counter reading, when it was taken elsewhere)."""
        now = time.perf_counter() if now is None else now
        if self.last is None:
            self.result.ttft = now - self.start
        else:
            self.result.itls.append(now - self.last)
        self.last = now

    def done(self, tokens: int) -> Result:
        self.result.latency = time.perf_counter() - self.start
        self.result.output_tokens = tokens
        return self.result


def openai_body(model: str, request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": request.messages_list(),
        "max_tokens": request.max_tokens,
        "temperature": 0,
        # Exactly max_tokens for every server (a vLLM sampling extension both servers accept).
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.stream_interval > 1:
        body["stream_interval"] = request.stream_interval
    return body


class SseEvents:
    """An OpenAI chat stream's SSE lines, timed: content chunks tick the Timer, the usage chunk gives the count."""

    def __init__(self) -> None:
        self.timer = Timer()
        self.tokens = 0

    def line(self, line: str) -> Result | None:
        """Take one line (one `data:` event); a failed Result when it is an error event."""
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        chunk = json.loads(line[6:])
        if "error" in chunk and not chunk.get("choices"):
            return Result(ok=False, error=str(chunk["error"].get("code") or "stream error"))
        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            self.timer.content()
        if chunk.get("usage"):
            self.tokens = chunk["usage"]["completion_tokens"]
        return None

    def done(self) -> Result:
        return self.timer.done(self.tokens)


async def sse_chat(http: Any, model: str, request: Request) -> Result:
    """POST /v1/chat/completions with stream=true on an httpx.AsyncClient whose base_url is the server's."""
    return await sse_post(http, openai_body(model, request))


async def sse_post(http: Any, body: dict[str, Any]) -> Result:
    """POST a streaming chat completion `body` (as given) and time its server-sent events."""
    events = SseEvents()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Result(ok=False, error=f"http {response.status_code}")
            async for line in response.aiter_lines():
                if (failed := events.line(line)) is not None:
                    return failed
    except Exception as exc:  # a benchmark counts failures by kind instead of stopping
        return Result(ok=False, error=type(exc).__name__)
    return events.done()


async def _status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> list[bytes]:
    """Send `request`; the response's status line, split (empty when the connection had been closed)."""
    try:
        writer.write(request)
        return (await reader.readline()).split()
    except OSError:
        return []


class RawHttp:
    """Chat requests over bare HTTP/1.1 keep-alive connections (asyncio streams, one request at a time on each,
    idle ones reused like httpx's and gRPC's): no client library's own cost in the timings, so TTFT differences
    against gRPC are the gateway's."""

    def __init__(self, host: str, port: int, model: str) -> None:
        self.host, self.port, self.model = host, port, model
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def chat(self, request: Request) -> Result:
        # Timed from here, as the other clients are: the status line comes when a server starts its response,
        # which some send at once (before the prompt is even scheduled) and some with the first token.
        events = SseEvents()
        body = json.dumps(openai_body(self.model, request)).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        if self.idle:
            # A kept-alive connection the server has closed meanwhile (uvicorn, behind `vllm serve`, closes idle ones
            # after 5 s) answers nothing: the request goes out again, once, on a new connection, as httpx does.
            reader, writer = self.idle.pop()
            status = await _status_line(reader, writer, head + body)
            if status:
                return await self._response(reader, writer, status, events)
            writer.close()
            result = await self._fresh(head + body, events)
            result.reconnected = True
            return result
        return await self._fresh(head + body, events)

    async def _fresh(self, request: bytes, events: SseEvents) -> Result:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            return Result(ok=False, error=type(exc).__name__)
        return await self._response(reader, writer, await _status_line(reader, writer, request), events)

    async def _response(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: list[bytes], events: SseEvents
    ) -> Result:
        reusable = False
        try:
            if len(status) < 2 or status[1] != b"200":
                return Result(ok=False, error=f"http {status[1].decode() if len(status) > 1 else '?'}")
            while (await reader.readline()).strip():
                pass  # headers: Envoy streams SSE with chunked transfer encoding
            pending = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                pending += await reader.readexactly(size)
                await reader.readexactly(2)
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    if (failed := events.line(event.decode())) is not None:
                        return failed
            while (await reader.readline()).strip():
                pass  # trailers, up to the blank line that ends the response
            reusable = True
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            return Result(ok=False, error=type(exc).__name__)
        finally:
            if reusable:
                self.idle.append((reader, writer))
            else:
                writer.close()
        return events.done()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def grpc_chat(stub: Any, model: str, request: Request) -> Result:
    """chatgen.v1.ChatService/StreamChatCompletion on an asyncio stub."""
    import grpc
    from google.protobuf import struct_pb2

    from chatgen.v1 import chatgen_pb2 as pb

    message = pb.CreateChatCompletionRequest(
        model=model,
        messages=[
            pb.ChatMessage(role=m["role"], content=struct_pb2.Value(string_value=m["content"]))
            for m in request.messages
        ],
        max_tokens=request.max_tokens,
        temperature=0,
        ignore_eos=True,
        stream_options=pb.StreamOptions(include_usage=True),
        stream_interval=request.stream_interval if request.stream_interval > 1 else None,
    )
    timer = Timer()
    tokens = 0
    try:
        async for chunk in stub.StreamChatCompletion(message):
            if chunk.choices and chunk.choices[0].delta.content:
                timer.content()
            if chunk.HasField("usage"):
                tokens = chunk.usage.completion_tokens
    except grpc.aio.AioRpcError as exc:
        return Result(ok=False, error=exc.code().name)
    return timer.done(tokens)
