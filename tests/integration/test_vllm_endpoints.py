"""vLLM's endpoints beside the OpenAI API, on the real server through Envoy and over gRPC: /tokenize and
/detokenize (TokenizerService), /health, /version, SageMaker's /ping and /invocations (ServingService)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service
from tests.integration.test_rest_api import sse_events

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


def post(service: Service, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{service.http_base}{path}", json=body, timeout=120)


@pytest.fixture(scope="module")
def tokenizer_stub(service: Service) -> Iterator[pb_grpc.TokenizerServiceStub]:
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield pb_grpc.TokenizerServiceStub(channel)


def test_tokenize_a_prompt_as_the_tokenizer_does(service: Service, tokenizer) -> None:  # type: ignore[no-untyped-def]
    reply = post(service, "/tokenize", {"model": MODEL_NAME, "prompt": PROMPT, "return_token_strs": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    ids = tokenizer.encode(PROMPT, add_special_tokens=True)
    assert body["tokens"] == ids and body["count"] == len(ids)
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(ids)
    assert body["max_model_len"] == httpx.get(f"{service.http_base}/v1/models").json()["data"][0]["max_model_len"]
    # The same count as a completion of it uses.
    usage = post(service, "/v1/completions", {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]


def test_tokenize_messages_as_chat_renders_them(service: Service, tokenizer) -> None:  # type: ignore[no-untyped-def]
    body = post(service, "/tokenize", {"messages": ASK}).json()
    chat = post(service, "/v1/chat/completions", {"model": MODEL_NAME, "messages": ASK, "max_tokens": 1}).json()
    assert body["count"] == chat["usage"]["prompt_tokens"] and body["token_strs"] == []
    text = tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert body["tokens"] == tokenizer.encode(text, add_special_tokens=False)
    bare = post(service, "/tokenize", {"messages": ASK, "add_generation_prompt": False}).json()
    assert bare["count"] < body["count"]
    answer = [*ASK, {"role": "assistant", "content": "The capital"}]
    open_ = post(service, "/tokenize", {"messages": answer, "continue_final_message": True}).json()
    assert tokenizer.decode(open_["tokens"]).endswith("The capital")


def test_detokenize_round_trip(service: Service, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(PROMPT)
    reply = post(service, "/detokenize", {"model": MODEL_NAME, "tokens": ids})
    assert reply.status_code == 200 and reply.json() == {"prompt": tokenizer.decode(ids)}


def test_tokenizer_over_grpc_matches_rest(tokenizer_stub: pb_grpc.TokenizerServiceStub, service: Service) -> None:
    for body in ({"prompt": PROMPT, "add_special_tokens": False}, {"messages": ASK}):
        request = json_format.ParseDict(body, pb.TokenizeRequest())
        over_grpc = tokenizer_stub.Tokenize(request, timeout=30)
        assert list(over_grpc.tokens) == post(service, "/tokenize", body).json()["tokens"]
    text = tokenizer_stub.Detokenize(pb.DetokenizeRequest(tokens=over_grpc.tokens), timeout=30).prompt
    assert text == post(service, "/detokenize", {"tokens": list(over_grpc.tokens)}).json()["prompt"]


BAD = {
    "neither": ({}, "prompt"),
    "both": ({"prompt": "a", "messages": ASK}, "prompt"),
    "template option on a prompt": ({"prompt": "a", "add_generation_prompt": False}, "add_generation_prompt"),
    "continue and generate": (
        {"messages": [*ASK, {"role": "assistant", "content": "x"}], "continue_final_message": True,
         "add_generation_prompt": True},
        "continue_final_message",
    ),
    "continue a user turn": ({"messages": ASK, "continue_final_message": True}, "continue_final_message"),
    "bad message": ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    "unknown model": ({"model": "nope", "prompt": "a"}, "model"),
    "prompt a number": ({"prompt": 5}, "prompt"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tokenize_requests(service: Service, case: str) -> None:
    body, param = BAD[case]
    reply = post(service, "/tokenize", body)
    assert reply.status_code in (400, 404), reply.text
    assert reply.json()["error"]["param"] == param


@pytest.mark.parametrize(("tokens", "param"), [([1, -1], "tokens[1]"), ([10**9], "tokens[0]"), ([1.5], "tokens[0]")])
def test_bad_detokenize_requests(service: Service, tokens: list[Any], param: str) -> None:
    reply = post(service, "/detokenize", {"tokens": tokens})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_health_ping_and_version(service: Service) -> None:
    for path in ("/health", "/ping"):
        reply = httpx.get(f"{service.http_base}{path}", timeout=10)
        assert reply.status_code == 200 and reply.content == b""
    version = httpx.get(f"{service.http_base}/version", timeout=10).json()
    assert version["version"] and version["engine"].split()[0] == (
        "vllm" if service.engine == "vllm" else "transformers"
    )


def test_invocations_route_by_shape(service: Service) -> None:
    chat_body = {"model": MODEL_NAME, "messages": ASK, "max_tokens": 6, "temperature": 0}
    via = post(service, "/invocations", chat_body).json()
    direct = post(service, "/v1/chat/completions", chat_body).json()
    assert via["object"] == "chat.completion"
    assert via["choices"][0]["message"] == direct["choices"][0]["message"]
    completion = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    via = post(service, "/invocations", completion).json()
    assert via["object"] == "text_completion"
    assert via["choices"][0]["text"] == post(service, "/v1/completions", completion).json()["choices"][0]["text"]
    streamed = post(service, "/invocations", {**chat_body, "stream": True})
    assert sse_events(streamed.text)[-1] == "[DONE]"
    neither = post(service, "/invocations", {"model": MODEL_NAME})
    assert neither.status_code == 400 and neither.json()["error"]["type"] == "invalid_request_error"
