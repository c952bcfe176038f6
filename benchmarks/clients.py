"""One streamed chat completion, timed, over OpenAI REST/SSE (vLLM's server, chatgen via Envoy) or chatgen gRPC."""

from __future__ import annotations

import json
import time
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


class Timer:
    """Times one streamed request: TTFT at the first content chunk, then the gaps between content chunks."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last: float | None = None
        self.result = Result(ok=True)

    def content(self) -> None:
        now = time.perf_counter()
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
    return {
        "model": model,
        "messages": request.messages_list(),
        "max_tokens": request.max_tokens,
        "temperature": 0,
        # Exactly max_tokens for every server (a vLLM sampling extension both servers accept).
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def sse_chat(http: Any, model: str, request: Request) -> Result:
    """POST /v1/chat/completions with stream=true on an httpx.AsyncClient whose base_url is the server's."""
    timer = Timer()
    tokens = 0
    try:
        async with http.stream("POST", "/v1/chat/completions", json=openai_body(model, request)) as response:
            if response.status_code != 200:
                await response.aread()
                return Result(ok=False, error=f"http {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk and not chunk.get("choices"):
                    return Result(ok=False, error=str(chunk["error"].get("code") or "stream error"))
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    timer.content()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # a benchmark counts failures by kind instead of stopping
        return Result(ok=False, error=type(exc).__name__)
    return timer.done(tokens)


async def grpc_chat(stub: Any, model: str, request: Request) -> Result:
    """chatgen.v1.Chat/StreamChatCompletion on an asyncio stub."""
    import grpc
    from google.protobuf import struct_pb2

    from chatgen.v1 import chatgen_pb2 as pb

    message = pb.ChatCompletionRequest(
        model=model,
        messages=[
            pb.ChatMessage(role=m["role"], content=struct_pb2.Value(string_value=m["content"]))
            for m in request.messages
        ],
        max_tokens=request.max_tokens,
        temperature=0,
        ignore_eos=True,
        stream_options=pb.StreamOptions(include_usage=True),
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
