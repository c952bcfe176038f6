"""Walks the error table (chatgen.errors.CASES) over REST and gRPC against the real server and Envoy.

Each request-shaped row is sent as it is written in the table, and the answer must be exactly the row's: HTTP
status and OpenAI `type`/`code`/`param` over REST, gRPC status and the same JSON in `x-chatgen-error` over gRPC.
Rows that need a particular server (a full queue, a draining or broken engine, API keys) are tested in the files
named in COVERED_ELSEWHERE; a test checks that every row is covered one way or the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format

from chatgen.errors import CASES, FAILURES, ErrorCase, Failure
from chatgen.v1 import chatgen_pb2 as pb
from tests.conftest import MODEL_NAME, Service, free_port
from tests.support.error_rows import observe

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Say hello."}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
GRPC_METHODS = {
    CHAT: (
        "/chatgen.v1.ChatService/CreateChatCompletion",
        "/chatgen.v1.ChatService/StreamChatCompletion",
        pb.CreateChatCompletionRequest,
    ),
    COMPLETIONS: (
        "/chatgen.v1.GenerateService/CreateCompletion",
        "/chatgen.v1.GenerateService/StreamCompletion",
        pb.CreateCompletionRequest,
    ),
}
TEN_MIB = 10 * 1024 * 1024


@dataclass(frozen=True)
class Example:
    case: str
    # The REST body: a dict (sent as JSON and, converted with json_format, as the gRPC message) or raw bytes.
    body: dict[str, object] | bytes
    param: str | None
    path: str = CHAT
    # Raw bytes for the gRPC call where `body` is not a message (None: the row has no gRPC form, e.g. a JSON type).
    grpc_bytes: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    grpc_timeout: float = 60
    # The failure comes after a REST stream has started (status 200 sent): it is the stream's last event.
    mid_stream: bool = False


def chat(**fields: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "messages": ASK, **fields}


EXAMPLES: list[Example] = [
    Example("malformed-body", b"{not json", None, grpc_bytes=b"\xff\xff\xff\xff"),
    Example("wrong-type", b'{"model": "m", "temperature": "hot"}', "temperature"),
    Example("wrong-type", b'{"model": "m", "messages": "hi"}', "messages"),
    # What the proto3 JSON mapping would take: numbers as strings, a string for a bool, an object for an array.
    Example("wrong-type", b'{"model": "m", "messages": {"role": "user", "content": "x"}}', "messages"),
    Example("wrong-type", b'{"model": "m", "messages": [], "max_tokens": "3"}', "max_tokens"),
    Example("wrong-type", b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    Example("wrong-type", b'{"model": "m", "prompt": "x", "echo": 1}', "echo", path=COMPLETIONS),
    Example("no-model", {"messages": ASK}, "model"),
    Example("unknown-model", chat(model="no-such-model"), "model"),
    Example("empty-messages", chat(messages=[]), "messages"),
    Example("empty-messages", {"model": MODEL_NAME, "prompt": ""}, "prompt", path=COMPLETIONS),
    # Found by the fuzz tests: a prompt of characters the tokenizer drops is no prompt at all.
    Example("empty-messages", {"model": MODEL_NAME, "prompt": "\u0006"}, "prompt", path=COMPLETIONS),
    Example("bad-role", chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    Example(
        "bad-content",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "messages[0].content[0]",
    ),
    Example("bad-content", {"model": MODEL_NAME, "prompt": "Hi", "stop": [5]}, "stop[0]", path=COMPLETIONS),
    Example("bad-content", chat(messages=[{"role": "user"}]), "messages[0].content"),
    Example("bad-content", chat(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
    Example("out-of-range", chat(temperature=3.5), "temperature"),
    Example("out-of-range", chat(top_p=0), "top_p"),
    Example("out-of-range", chat(max_tokens=0), "max_tokens"),
    Example("out-of-range", chat(logit_bias={"5": 101}), "logit_bias.5"),
    Example("bad-tools", chat(tool_choice="sometimes"), "tool_choice"),
    Example("bad-tools", chat(tools=[{"type": "function", "function": {}}]), "tools[0]"),
    Example("prompt-too-long", chat(messages=[{"role": "user", "content": "word " * 3000}]), "messages"),
    Example("prompt-too-long", {"model": MODEL_NAME, "prompt": "word " * 3000}, "prompt", path=COMPLETIONS),
    Example("max-tokens-over", chat(max_tokens=100_000), "max_tokens"),
    Example(
        "unsupported",
        chat(tools=[{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]),
        "tools",
    ),
    Example("too-large", chat(messages=[{"role": "user", "content": "x" * TEN_MIB}]), None),
    # 500 tokens take far longer than a second on these engines, and the role chunk goes out well within it: the
    # deadline passes mid-stream. (50 ms could pass while the prompt was still being rendered: a 504 before any chunk.)
    Example(
        "deadline",
        chat(max_tokens=500, ignore_eos=True),
        None,
        headers={"x-request-timeout-ms": "1000"},
        grpc_timeout=1.0,
        mid_stream=True,
    ),
]

# Rows that need a server set up for them, and the test file that walks them.
COVERED_ELSEWHERE: dict[str, str] = {
    "no-chat-template": "test_base_model.py",
    "unknown-response": "test_responses_api.py",
    "unknown-adapter": "test_lora.py",
    "bad-adapter": "test_lora.py",
    "adapter-updates-off": "test_frontends.py",
    "bad-key": "test_auth.py",
    "overloaded": "test_limits.py",
    "draining": "test_lifecycle.py",
    "engine-down": "test_lifecycle.py",
    "slow-reader": "test_cancellation.py",
    "headers-too-large": "test_hostile_input.py",
    "bad-media-type": "test_hostile_input.py",
    "bad-timeout": "test_hostile_input.py",
    # Unreachable by design: nothing a client sends may produce it (the fuzz tests assert that it never shows).
    "internal": "test_fuzz.py",
}

CASE_BY_ID: dict[str, ErrorCase] = {case.id: case for case in CASES}


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.http_base, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.grpc_address) as ch:
        yield ch


def check_openai_error(error: dict[str, object], failure: Failure, param: str | None) -> None:
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == FAILURES[failure].openai_type, error
    assert error["code"] == failure.value, error
    assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"], error


def example_id(example: Example) -> str:
    return f"{example.case}:{example.param}"


# A raw body has no stream switch: it is sent once.
REST_CALLS = [(e, s) for e in EXAMPLES for s in (False, True) if not (s and isinstance(e.body, bytes))]


@pytest.mark.parametrize(
    ("example", "stream"), REST_CALLS, ids=[f"{example_id(e)}:{'stream' if s else 'unary'}" for e, s in REST_CALLS]
)
def test_rest_answers_as_the_table_says(http: httpx.Client, example: Example, stream: bool) -> None:
    failure = CASE_BY_ID[example.case].failure
    if isinstance(example.body, bytes):
        response = http.post(example.path, content=example.body, headers={"content-type": "application/json"})
    else:
        response = http.post(example.path, json={**example.body, "stream": stream}, headers=example.headers)
    if stream and example.mid_stream:
        # The role chunk went out first, so the status is 200 and the error is an event, then [DONE] (as vLLM).
        assert response.status_code == 200, response.text
        events = [line[len("data: ") :] for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        check_openai_error(json.loads(events[-2])["error"], failure, example.param)
        observe(example.case)
        return
    assert response.status_code == FAILURES[failure].http_status, response.text
    assert response.headers["content-type"] == "application/json"
    check_openai_error(response.json()["error"], failure, example.param)
    observe(example.case)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.case != "wrong-type"], ids=example_id)
def test_grpc_answers_as_the_table_says(channel: grpc.Channel, example: Example, stream: bool) -> None:
    failure = CASE_BY_ID[example.case].failure
    unary_method, stream_method, message_type = GRPC_METHODS[example.path]
    if example.grpc_bytes is not None:
        payload = example.grpc_bytes
    else:
        assert isinstance(example.body, dict)
        payload = json_format.ParseDict(example.body, message_type()).SerializeToString()
    method = stream_method if stream else unary_method
    call = (channel.unary_stream if stream else channel.unary_unary)(method)  # raw bytes in and out
    with pytest.raises(grpc.RpcError) as info:
        reply = call(payload, timeout=example.grpc_timeout)
        if stream:
            list(reply)
    assert info.value.code() == FAILURES[failure].grpc_code, info.value.details()
    trailers = dict(info.value.trailing_metadata() or ())
    if CASE_BY_ID[example.case].by in ("server", "Envoy / server"):
        check_openai_error(json.loads(trailers["x-chatgen-error"])["error"], failure, example.param)


def test_unknown_path_and_method(http: httpx.Client, channel: grpc.Channel) -> None:
    response = http.get("/v1/nothing-here")
    assert response.status_code == FAILURES[Failure.NOT_FOUND].http_status
    check_openai_error(response.json()["error"], Failure.NOT_FOUND, None)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/chatgen.v1.ChatService/NoSuchMethod")(b"", timeout=10)
    assert info.value.code() == FAILURES[Failure.NOT_FOUND].grpc_code
    observe("unknown-path")


def test_the_server_still_serves_after_the_table(http: httpx.Client) -> None:
    response = http.post(CHAT, json=chat(max_tokens=5, temperature=0))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]


def test_a_gateway_without_its_server_is_503_unavailable(tmp_path: Path) -> None:
    import asyncio

    from chatgen.gateway import EnvoyProcess, GatewaySettings
    from chatgen.probes import http_get_status

    dead_port, http_port, admin_port = free_port(), free_port(), free_port()
    envoy = EnvoyProcess(
        GatewaySettings("127.0.0.1", http_port, "127.0.0.1", dead_port, admin_port, tmp_path, log_level="error")
    )
    envoy.start()
    try:

        async def live() -> None:
            for _ in range(100):
                if await http_get_status(admin_port, "/ready") == 200:
                    return
                await asyncio.sleep(0.1)
            raise TimeoutError("Envoy did not start")

        asyncio.run(live())
        response = httpx.post(f"http://127.0.0.1:{http_port}{CHAT}", json=chat(), timeout=30)
        assert response.status_code == FAILURES[Failure.UNAVAILABLE].http_status
        check_openai_error(response.json()["error"], Failure.UNAVAILABLE, None)
        observe("server-unreachable")
    finally:
        envoy.stop()


def test_every_row_of_the_table_has_a_test() -> None:
    """Statically, each row has its example here or a test named in COVERED_ELSEWHERE; that each row was really
    answered as the table says is checked at the end of a whole run (tests.support.error_rows)."""
    here = {example.case for example in EXAMPLES} | {"unknown-path", "server-unreachable"}
    assert here.isdisjoint(COVERED_ELSEWHERE)
    assert here | set(COVERED_ELSEWHERE) == set(CASE_BY_ID)
