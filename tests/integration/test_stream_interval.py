"""Stream coalescing on the real server (both engines, REST through Envoy and gRPC): a server started with
--stream-interval 4 sends a chunk per 4 tokens, the first token and the end at once; requests raise it with
`stream_interval` (vLLM's) and bound it in time with `stream_interval_ms` (chatgen's); the tokens are the same
as one chunk per token gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, TEST_ENGINES, Service, running_service

pytestmark = pytest.mark.integration

TOKENS = 13
CHAT: dict[str, Any] = {
    "model": MODEL_NAME,
    "messages": [{"role": "user", "content": "Count to twenty."}],
    "max_tokens": TOKENS,
    "temperature": 0,
    "ignore_eos": True,
    "stream": True,
    "return_token_ids": True,
}


@pytest.fixture(scope="module", params=TEST_ENGINES)
def coalescing(request: pytest.FixtureRequest) -> Iterator[Service]:
    with running_service(request.param, "--stream-interval", "4") as svc:
        yield svc


def rest_chunks(service: Service, path: str = "/v1/chat/completions", **fields: Any) -> list[dict[str, Any]]:
    body = {**CHAT, **fields}
    if path == "/v1/completions":
        body = {**{k: v for k, v in body.items() if k != "messages"}, "prompt": "Count to twenty:"}
    reply = httpx.post(f"{service.http_base}{path}", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def sizes(chunks: list[dict[str, Any]]) -> list[int]:
    """Tokens per chunk that carries any."""
    return [n for c in chunks for choice in c["choices"] if (n := len(choice.get("token_ids") or []))]


def tokens(chunks: list[dict[str, Any]]) -> list[int]:
    return [t for c in chunks for choice in c["choices"] for t in choice.get("token_ids") or []]


def test_the_server_interval_sends_a_chunk_per_four_tokens_with_the_same_tokens(coalescing: Service) -> None:
    chunks = rest_chunks(coalescing)
    assert sizes(chunks) == [1, 4, 4, 4]
    # The last of them finishes; every chunk is a whole chat.completion.chunk.
    assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "length"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # One chunk per token (a 1 ms bound: every token here takes longer): the same tokens and text.
    plain = rest_chunks(coalescing, stream_interval_ms=1)
    assert sizes(plain) == [1] * TOKENS
    assert tokens(chunks) == tokens(plain)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(c["choices"][0]["delta"].get("content") or "" for c in plain if c["choices"])


def test_a_request_raises_the_interval_and_cannot_lower_it(coalescing: Service) -> None:
    assert sizes(rest_chunks(coalescing, stream_interval=8)) == [1, 8, 4]
    assert sizes(rest_chunks(coalescing, stream_interval=2)) == [1, 4, 4, 4]
    assert sizes(rest_chunks(coalescing, path="/v1/completions", stream_interval=6)) == [1, 6, 6]


def test_the_time_bound_sends_what_it_holds(coalescing: Service) -> None:
    # Each token takes more than a millisecond on either engine here: a 1 ms bound sends every token as it comes,
    # and without it the count alone decides.
    assert sizes(rest_chunks(coalescing, stream_interval=1000, stream_interval_ms=1)) == [1] * TOKENS
    assert sizes(rest_chunks(coalescing, stream_interval=1000)) == [1, TOKENS - 1]


def test_grpc_streams_coalesce_alike(coalescing: Service) -> None:
    request = pb.CreateChatCompletionRequest(
        model=MODEL_NAME,
        messages=[pb.ChatMessage(role="user", content=struct_pb2.Value(string_value="Count to twenty."))],
        max_tokens=TOKENS,
        temperature=0,
        ignore_eos=True,
        return_token_ids=True,
        stream_interval=5,
    )
    with grpc.insecure_channel(coalescing.grpc_address) as channel:
        chunks = list(pb_grpc.ChatServiceStub(channel).StreamChatCompletion(request, timeout=120))
    assert [len(c.choices[0].token_ids) for c in chunks if c.choices and c.choices[0].token_ids] == [1, 5, 5, 2]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream_interval": 0}, "stream_interval"),
        ({"stream_interval": "4"}, None),
        ({"stream_interval": 2.5}, None),
        ({"stream_interval_ms": -1}, "stream_interval_ms"),
    ],
)
def test_a_bad_interval_is_a_400(coalescing: Service, fields: dict[str, Any], param: str | None) -> None:
    reply = httpx.post(f"{coalescing.http_base}/v1/chat/completions", json={**CHAT, **fields}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    else:  # a wrong JSON type, refused before the server: the field is named in the message
        assert "stream_interval" in error["message"]
