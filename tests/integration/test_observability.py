"""What an operator sees of each call, on the real server (both engines) and through the real Envoy: the request
id going back to the caller, one JSON log line per call, and the Prometheus families that count and time calls."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(service: Service) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def log_line(service: Service, request_id: str, timeout: float = 10) -> dict[str, object]:
    """The server's JSON log line for this request id (written as the call ends, so poll briefly)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"chatgen\.requests: (\{.*\})$")
    while time.monotonic() < deadline:
        for line in list(service.log):
            match = pattern.search(line.rstrip("\n"))
            if match and f'"request_id": "{request_id}"' in match.group(1):
                return json.loads(match.group(1))  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no log line for {request_id}")


def wait_for(service: Service, name: str, at_least: float, **labels: str) -> float:
    deadline = time.monotonic() + 10
    while True:
        got = value(scrape(service), name, **labels)
        if got >= at_least or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.grpc_address) as ch:
        yield ch


def chat(text: str, max_tokens: int = 8, model: str = MODEL_NAME) -> pb.CreateChatCompletionRequest:
    return pb.CreateChatCompletionRequest(
        model=model,
        messages=[pb.ChatMessage(role="user", content=struct_pb2.Value(string_value=text))],
        max_tokens=max_tokens,
        ignore_eos=True,
    )


def test_grpc_calls_are_counted_timed_logged_and_return_their_request_id(
    service: Service, channel: grpc.Channel
) -> None:
    before = scrape(service)
    stub = pb_grpc.ChatServiceStub(channel)
    unary_id, stream_id = f"unary-{uuid.uuid4().hex[:8]}", f"stream-{uuid.uuid4().hex[:8]}"

    reply, call = stub.CreateChatCompletion.with_call(
        chat("Name a colour.", max_tokens=6), metadata=[("x-request-id", unary_id)], timeout=120
    )
    assert dict(call.initial_metadata())["x-request-id"] == unary_id
    stream = stub.StreamChatCompletion(chat("Name a city.", max_tokens=5), metadata=[("x-request-id", stream_id)])
    chunks = list(stream)
    assert "x-request-id" not in dict(stream.initial_metadata())  # no write of its own ahead of the first chunk
    assert dict(stream.trailing_metadata())["x-request-id"] == stream_id
    assert chunks[-1].choices[0].finish_reason == "length"

    line = log_line(service, unary_id)
    assert line["rpc"] == "CreateChatCompletion" and line["status"] == "OK" and line["model"] == MODEL_NAME
    assert line["id"] == reply.id and line["n"] == 1
    assert line["prompt_tokens"] == reply.usage.prompt_tokens and line["completion_tokens"] == 6
    assert 0 < line["ttft_ms"] <= line["e2e_ms"]  # type: ignore[operator]
    line = log_line(service, stream_id)
    assert line["rpc"] == "StreamChatCompletion" and line["status"] == "OK" and line["completion_tokens"] == 5

    after = scrape(service)
    for rpc in ("CreateChatCompletion", "StreamChatCompletion"):
        delta = value(after, "chatgen_requests_total", rpc=rpc, code="OK") - value(
            before, "chatgen_requests_total", rpc=rpc, code="OK"
        )
        assert delta == 1, rpc
        for family in ("chatgen_time_to_first_token_seconds_count", "chatgen_e2e_request_latency_seconds_count"):
            assert value(after, family, rpc=rpc) - value(before, family, rpc=rpc) == 1, (family, rpc)
    generated = value(after, "chatgen_generation_tokens_total") - value(before, "chatgen_generation_tokens_total")
    assert generated == 6 + 5
    prompt = value(after, "chatgen_prompt_tokens_total") - value(before, "chatgen_prompt_tokens_total")
    assert prompt == reply.usage.prompt_tokens + line["prompt_tokens"]  # type: ignore[operator]
    # One gap between successive outputs per decode step: at most tokens - 1 per call, and some were seen.
    gaps = value(after, "chatgen_inter_token_latency_seconds_count") - value(
        before, "chatgen_inter_token_latency_seconds_count"
    )
    assert 1 <= gaps <= (6 - 1) + (5 - 1)


def test_a_failed_call_is_counted_by_its_status_and_returns_its_id_in_the_trailers(
    service: Service, channel: grpc.Channel
) -> None:
    before = scrape(service)
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
            chat("hi", model="no-such-model"), metadata=[("x-request-id", "missing-model-1")], timeout=30
        )
    err = caught.value
    assert err.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert dict(err.trailing_metadata())["x-request-id"] == "missing-model-1"  # type: ignore[attr-defined]
    line = log_line(service, "missing-model-1")
    assert line["status"] == "NOT_FOUND" and line["model"] == "no-such-model" and line["id"] is None
    assert line["completion_tokens"] == 0 and line["ttft_ms"] is None
    got = wait_for(
        service,
        "chatgen_requests_total",
        value(before, "chatgen_requests_total", rpc="CreateChatCompletion", code="NOT_FOUND") + 1,
        rpc="CreateChatCompletion",
        code="NOT_FOUND",
    )
    assert got == value(before, "chatgen_requests_total", rpc="CreateChatCompletion", code="NOT_FOUND") + 1


def test_a_stream_the_caller_abandons_is_counted_as_cancelled(service: Service, channel: grpc.Channel) -> None:
    labels = {"rpc": "StreamCompletion", "code": "CANCELLED"}
    before = value(scrape(service), "chatgen_requests_total", **labels)
    request = pb.CreateCompletionRequest(
        model=MODEL_NAME, prompt=struct_pb2.Value(string_value="Once upon a time"), max_tokens=400, ignore_eos=True
    )
    stream = pb_grpc.GenerateServiceStub(channel).StreamCompletion(request, metadata=[("x-request-id", "abandoned-1")])
    next(stream)
    stream.cancel()
    assert wait_for(service, "chatgen_requests_total", before + 1, **labels) == before + 1
    line = log_line(service, "abandoned-1")
    assert line["status"] == "CANCELLED" and 0 < line["completion_tokens"] < 400  # type: ignore[operator]


def test_rest_callers_get_their_request_id_back_or_one_made_for_them(service: Service) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with httpx.Client(base_url=service.http_base, timeout=120) as http:
        mine = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "rest-mine-1"})
        assert mine.status_code == 200 and mine.headers.get_list("x-request-id") == ["rest-mine-1"]
        line = log_line(service, "rest-mine-1")
        # A unary REST call is logged as what it was, not as a call cancelled once its reply was sent.
        assert (line["rpc"], line["status"], line["completion_tokens"]) == ("CreateChatCompletion", "OK", 3)

        made = http.post("/v1/chat/completions", json={**body, "stream": True})
        assert made.status_code == 200 and "data: [DONE]" in made.text
        made_id = made.headers["x-request-id"]
        assert str(uuid.UUID(made_id)) == made_id  # Envoy's own, a UUID
        line = log_line(service, made_id)
        assert line["rpc"] == "StreamChatCompletion" and line["status"] == "OK" and line["completion_tokens"] == 3

        # Errors too, with the id the gateway passed on.
        missing = http.post("/v1/chat/completions", json={**body, "model": "nope"}, headers={"x-request-id": "r-404"})
        assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
        assert missing.json()["error"]["code"] == "model_not_found"
        assert log_line(service, "r-404")["status"] == "NOT_FOUND"


def test_the_openai_sdk_sees_the_request_id(service: Service) -> None:
    raw = service.openai().chat.completions.with_raw_response.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        extra_headers={"x-request-id": "sdk-1"},
    )
    assert raw.headers["x-request-id"] == "sdk-1" and raw.parse().usage.completion_tokens >= 1  # type: ignore[union-attr]


def test_engine_metrics_are_served_alongside(service: Service) -> None:
    names = {name for name, _ in scrape(service)}
    assert {"chatgen_engine_running_requests", "chatgen_waiting_slots", "process_resident_memory_bytes"} <= names
    if service.engine == "vllm":
        # vLLM's own families (its stat logger writes them in this process): KV-cache usage among them.
        assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:prompt_tokens_total"} <= names
        assert 0 <= value(scrape(service), "vllm:kv_cache_usage_perc", model_name=MODEL_NAME, engine="0") <= 1
    else:
        assert not any(name.startswith("vllm:") for name in names)
