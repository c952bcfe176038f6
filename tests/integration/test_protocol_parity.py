"""Every request feature gives the same answer over gRPC and over REST (through Envoy), unary and streaming.

One contract, two protocols: each case is sent as JSON to the REST gateway and as the same JSON parsed onto the
proto to the gRPC server, at temperature 0, and the choices (text, reasoning, tool calls, finish reasons,
logprobs) and usage must be identical.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from chatgen.transport.json_mapping import json_text
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service
from tests.integration.test_rest_api import sse_events
from tests.support.sse import named_events

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
CHAT_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "n": {"n": 2, "max_tokens": 4, "ignore_eos": True},
    "logprobs": {"logprobs": True, "top_logprobs": 2, "max_tokens": 6},
    "stop": {"stop": ["Paris"], "stop_token_ids": [30]},
    "logit_bias": {"logit_bias": {"7042": 100}, "max_tokens": 3},
    "json_schema": {
        "max_tokens": 60,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "c",
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                },
            },
        },
    },
    "structured_choice": {"structured_outputs": {"choice": ["Paris", "Rome"]}, "max_tokens": 5},
    "token_ids": {"return_token_ids": True, "max_tokens": 4},
    "continue_echo": {
        "messages": [*ASK, {"role": "assistant", "content": "The capital of France is"}],
        "continue_final_message": True,
        "echo": True,
        "max_tokens": 4,
    },
    "min_tokens_salt": {"min_tokens": 3, "max_tokens": 6, "cache_salt": "s1", "allowed_token_ids": [7042, 30, 2]},
    "logprob_token_ids": {"logprobs": True, "logprob_token_ids": [100, 1000, 5000], "max_tokens": 3},
    "named_tool": {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
    },
}
COMPLETION_CASES: dict[str, dict[str, Any]] = {
    "plain": {"max_tokens": 8},
    "echo_logprobs": {"max_tokens": 4, "echo": True, "logprobs": 2},
    "n_stop": {"n": 2, "max_tokens": 12, "stop": ["."]},
    "batch": {"prompt": ["The capital of France is", "Two plus two is"], "n": 2, "max_tokens": 6},
    "token_ids": {"prompt": [[504, 3575, 282, 4649, 314], [21350, 2915]], "max_tokens": 4, "echo": True},
    "logprobs_as_ids": {"echo": True, "logprobs": 1, "return_tokens_as_token_ids": True, "max_tokens": 2},
    "logprob_token_ids": {"logprobs": 2, "logprob_token_ids": [100, 1000], "max_tokens": 3},
    "token_ids_batch": {"prompt": ["The capital of France is", "Hi"], "return_token_ids": True, "max_tokens": 3},
    "structured_regex": {"structured_outputs": {"regex": "[A-Z][a-z]{2,8}"}, "max_tokens": 8},
    "structured_grammar": {"structured_outputs": {"grammar": 'root ::= "yes" | "no"'}, "max_tokens": 4},
}


@pytest.fixture(scope="module")
def stubs(service: Service) -> Iterator[tuple[pb_grpc.ChatServiceStub, pb_grpc.GenerateServiceStub]]:
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield pb_grpc.ChatServiceStub(channel), pb_grpc.GenerateServiceStub(channel)


def as_json(message: Any) -> dict[str, Any]:
    """A gRPC reply as the REST API renders the same message (transport.json_mapping.json_text): the comparison is
    then of what the two protocols carry, not of how JSON prints it."""
    return json.loads(json_text(message))  # type: ignore[no-any-return]


def comparable(reply: dict[str, Any]) -> dict[str, Any]:
    choices = json.loads(json.dumps(reply["choices"]))
    for choice in choices:
        for call in (choice.get("message") or {}).get("tool_calls", []):
            call.pop("id")  # random per call
    return {"choices": choices, "usage": reply["usage"]}


def streamed(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice: the concatenated text/content, tool-call arguments and the finish reason."""
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {"text": "", "arguments": "", "finish": None, "tokens": []})
    for chunk in chunks:
        for c in chunk["choices"]:
            acc = out[c["index"]]
            delta = c.get("delta", {})
            acc["text"] += c.get("text") or delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                acc["arguments"] += (call.get("function") or {}).get("arguments") or ""
            acc["finish"] = c.get("finish_reason") or acc["finish"]
            logprobs = c.get("logprobs") or {}
            acc["tokens"] += [e["token"] for e in logprobs.get("content") or []] + list(logprobs.get("tokens") or [])
    return dict(out)


def rest(service: Service, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{service.http_base}{path}", json=body, timeout=180)


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_parity(
    service: Service, stubs: tuple[pb_grpc.ChatServiceStub, pb_grpc.GenerateServiceStub], case: str
) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, "temperature": 0, **CHAT_CASES[case]}
    over_rest = rest(service, "/v1/chat/completions", body)
    assert over_rest.status_code == 200, over_rest.text
    request = json_format.ParseDict(body, pb.CreateChatCompletionRequest())
    over_grpc = as_json(stubs[0].CreateChatCompletion(request, timeout=180))
    assert comparable(over_rest.json()) == comparable(over_grpc)

    sse = [json.loads(e) for e in sse_events(rest(service, "/v1/chat/completions", {**body, "stream": True}).text)[:-1]]
    grpc_chunks = [as_json(c) for c in stubs[0].StreamChatCompletion(request, timeout=180)]
    assert streamed(sse) == streamed(grpc_chunks)
    assert len(streamed(sse)) == len(over_grpc["choices"])


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_completion_parity(
    service: Service, stubs: tuple[pb_grpc.ChatServiceStub, pb_grpc.GenerateServiceStub], case: str
) -> None:
    body = {"model": MODEL_NAME, "prompt": "The capital of France is", "temperature": 0, **COMPLETION_CASES[case]}
    over_rest = rest(service, "/v1/completions", body)
    assert over_rest.status_code == 200, over_rest.text
    request = json_format.ParseDict(body, pb.CreateCompletionRequest())
    over_grpc = as_json(stubs[1].CreateCompletion(request, timeout=180))
    assert comparable(over_rest.json()) == comparable(over_grpc)

    sse = [json.loads(e) for e in sse_events(rest(service, "/v1/completions", {**body, "stream": True}).text)[:-1]]
    grpc_chunks = [as_json(c) for c in stubs[1].StreamCompletion(request, timeout=180)]
    assert streamed(sse) == streamed(grpc_chunks)
    unary_texts = {c["index"]: c["text"] for c in over_grpc["choices"]}
    assert {i: acc["text"] for i, acc in streamed(sse).items()} == unary_texts


# The agent APIs, each with the features it maps onto chat: its answer, stop reason and usage over both protocols.
MESSAGES_CASES: dict[str, dict[str, Any]] = {
    "plain": {"max_tokens": 12},
    "system_and_stop": {"max_tokens": 20, "system": "Answer briefly.", "stop_sequences": [" is"]},
    "sampling": {"max_tokens": 8, "top_k": 1, "top_p": 0.5},
}
RESPONSES_CASES: dict[str, dict[str, Any]] = {
    "plain": {"max_output_tokens": 12},
    "instructions_items": {
        "max_output_tokens": 8,
        "instructions": "Answer briefly.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Name a color."}]}],
    },
    "json_object": {"max_output_tokens": 16, "text": {"format": {"type": "json_object"}}},
}


@pytest.mark.parametrize("case", list(MESSAGES_CASES))
def test_messages_parity(service: Service, case: str) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, "temperature": 0, **MESSAGES_CASES[case]}
    over_rest = rest(service, "/v1/messages", body)
    assert over_rest.status_code == 200, over_rest.text
    request = json_format.ParseDict(body, pb.CreateMessageRequest())
    with grpc.insecure_channel(service.grpc_address) as channel:
        stub = pb_grpc.MessagesServiceStub(channel)
        over_grpc = as_json(stub.CreateMessage(request, timeout=180))
        events = [as_json(e) for e in stub.StreamMessage(request, timeout=180)]
    keys = ("content", "stop_reason", "stop_sequence", "usage")
    assert {k: over_rest.json().get(k) for k in keys} == {k: over_grpc.get(k) for k in keys}
    sse = [data for _, data in named_events(rest(service, "/v1/messages", {**body, "stream": True}).text)]
    text = [e["delta"]["text"] for e in sse if e["type"] == "content_block_delta"]
    assert text == [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(text) == over_grpc["content"][0]["text"]


@pytest.mark.parametrize("case", list(RESPONSES_CASES))
def test_responses_parity(service: Service, case: str) -> None:
    body = {"model": MODEL_NAME, "input": "What is the capital of France?", "temperature": 0, "store": False}
    body.update(RESPONSES_CASES[case])
    over_rest = rest(service, "/v1/responses", body)
    assert over_rest.status_code == 200, over_rest.text
    request = json_format.ParseDict(body, pb.CreateResponseRequest())
    with grpc.insecure_channel(service.grpc_address) as channel:
        stub = pb_grpc.ResponsesServiceStub(channel)
        over_grpc = as_json(stub.CreateResponse(request, timeout=180))
        events = [as_json(e) for e in stub.StreamResponse(request, timeout=180)]
    output = [{k: v for k, v in item.items() if k != "id"} for item in over_grpc["output"]]
    assert [{k: v for k, v in item.items() if k != "id"} for item in over_rest.json()["output"]] == output
    assert over_rest.json()["usage"] == over_grpc["usage"] and over_rest.json()["status"] == over_grpc["status"]
    sse = [data for _, data in named_events(rest(service, "/v1/responses", {**body, "stream": True}).text)]
    assert [e["type"] for e in sse] == [e["type"] for e in events]
    assert sse[-1]["response"]["usage"] == events[-1]["response"]["usage"] == over_grpc["usage"]
