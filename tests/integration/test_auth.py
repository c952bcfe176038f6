"""Optional API keys: REST `Authorization: Bearer` or `x-api-key`, gRPC `authorization` metadata; probes stay
open."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.client import ChatgenClient, ChatgenError
from tests.conftest import MODEL_NAME, Service, running_service
from tests.support.error_rows import check_row

pytestmark = pytest.mark.integration

KEYS = {"cli": "sk-cli-123", "file": "sk-file-456", "env": "sk-env-789"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def secured(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# team keys\n{KEYS['file']}\n\n")
    os.environ["CHATGEN_API_KEYS"] = KEYS["env"]
    try:
        # Authentication lives in the transport, the same for both engines: the quick-starting one is enough.
        with running_service("hf", "--api-key", KEYS["cli"], "--api-key-file", str(key_file)) as svc:
            yield svc
    finally:
        del os.environ["CHATGEN_API_KEYS"]


@pytest.mark.parametrize("source", list(KEYS))
def test_every_key_source_is_accepted(secured: Service, source: str) -> None:
    client = openai.OpenAI(api_key=KEYS[source], base_url=f"{secured.http_base}/v1", max_retries=0)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=ASK, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert "Paris" in (reply.choices[0].message.content or "")


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEYS["cli"]}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models"])
def test_rest_without_a_valid_key_is_401(secured: Service, headers: dict[str, str], path: str) -> None:
    body = {"model": MODEL_NAME, "messages": ASK}
    response = (
        httpx.get(f"{secured.http_base}{path}", headers=headers)
        if path == "/v1/models"
        else httpx.post(f"{secured.http_base}{path}", json=body, headers=headers)
    )
    assert response.status_code == 401
    check_row("bad-key", response.json()["error"])
    assert KEYS["cli"] not in response.text


def test_openai_sdk_gets_authentication_error(secured: Service) -> None:
    client = openai.OpenAI(api_key="sk-nope", base_url=f"{secured.http_base}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL_NAME, messages=ASK, stream=True)  # type: ignore[arg-type]


def test_anthropic_sdk_sends_its_key_as_x_api_key(secured: Service) -> None:
    client = anthropic.Anthropic(api_key=KEYS["file"], base_url=secured.http_base, max_retries=0)
    reply = client.messages.create(model=MODEL_NAME, max_tokens=4, messages=ASK)  # type: ignore[arg-type]
    assert reply.usage.output_tokens == 4
    # x-api-key works on the OpenAI paths too.
    chat = httpx.post(
        f"{secured.http_base}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": ASK, "max_tokens": 2},
        headers={"x-api-key": KEYS["cli"]},
    )
    assert chat.status_code == 200
    wrong = anthropic.Anthropic(api_key="sk-nope", base_url=secured.http_base, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model=MODEL_NAME, max_tokens=4, messages=ASK)  # type: ignore[arg-type]
    assert info.value.body == {  # Anthropic's error shape on /v1/messages
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
        },
    }
    assert KEYS["file"] not in json.dumps(info.value.body)


def test_grpc_metadata_key(secured: Service) -> None:
    with ChatgenClient(secured.grpc_address, model=MODEL_NAME) as anonymous:
        with pytest.raises(ChatgenError) as info:
            anonymous.chat(ASK, max_tokens=2)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ChatgenError) as info:
            list(anonymous.chat_stream(ASK, max_tokens=2))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    auth = [("authorization", f"Bearer {KEYS['env']}")]
    with ChatgenClient(secured.grpc_address, model=MODEL_NAME, metadata=auth) as client:
        assert client.chat(ASK, max_tokens=2).usage.completion_tokens == 2
        assert len(list(client.chat_stream(ASK, max_tokens=2))) >= 2


def test_health_and_reflection_need_no_key(secured: Service) -> None:
    with grpc.insecure_channel(secured.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_keys_never_reach_the_log(secured: Service) -> None:
    log = "".join(secured.log)
    assert all(key not in log for key in KEYS.values()), json.dumps([k for k in KEYS.values() if k in log])


def auth_failures(service: Service) -> dict[str, float]:
    text = httpx.get(
        f"http://127.0.0.1:{service.metrics_port}/metrics", headers={"authorization": f"Bearer {KEYS['file']}"}
    ).text
    found = {}
    for line in text.splitlines():
        if line.startswith("chatgen_auth_failures_total{"):
            found[line.split('reason="')[1].split('"')[0]] = float(line.split()[-1])
    return found


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic a2V5"}])
def test_metrics_need_a_key_too(secured: Service, headers: dict[str, str]) -> None:
    response = httpx.get(f"http://127.0.0.1:{secured.metrics_port}/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "chatgen_" not in response.text
    assert (
        "chatgen_requests_total"
        in httpx.get(
            f"http://127.0.0.1:{secured.metrics_port}/metrics", headers={"authorization": f"Bearer {KEYS['env']}"}
        ).text
    )


def test_failed_authentications_are_counted_by_reason_and_logged_without_flooding(secured: Service) -> None:
    before, lines_before = auth_failures(secured), len(secured.log)
    sent = {
        "missing": ({}, 3),
        "malformed": ({"authorization": "Basic a2V5"}, 2),
        "wrong": ({"authorization": "Bearer no"}, 4),
    }
    for headers, times in sent.values():
        for _ in range(times):
            assert httpx.get(f"{secured.http_base}/v1/models", headers=headers).status_code == 401
    after = auth_failures(secured)
    assert {reason: after.get(reason, 0) - before.get(reason, 0) for reason in sent} == {
        "missing": 3,
        "malformed": 2,
        "wrong": 4,
    }
    logged = [line for line in secured.log[lines_before:] if "failed authentication" in line]
    # 9 failures within a second: at most one line (one per 10 s); some line of the run's names a method and its
    # counts, and none carries a key.
    assert len(logged) <= 1, logged
    every = [line for line in secured.log if "failed authentication" in line]
    assert every and all(" on /chatgen.v1." in line and "Bearer" not in line for line in every), every
    assert any("wrong" in line or "missing" in line for line in every)


def test_a_key_on_the_command_line_is_warned_about_and_the_ready_line_says_keys_are_on(secured: Service) -> None:
    assert any("--api-key puts the key on the command line" in line for line in secured.log)
    ready = next(line for line in secured.log if "[chatgen] ready:" in line)
    assert "(loopback only; API key required" in ready
    assert f"metrics on http://127.0.0.1:{secured.metrics_port}/metrics" in ready


def test_probes_are_open_and_the_tokenizer_is_not(secured: Service) -> None:
    for path in ("/health", "/ping", "/version"):
        assert httpx.get(f"{secured.http_base}{path}", timeout=10).status_code == 200, path
    body = {"prompt": "hi"}
    for path in ("/tokenize", "/invocations"):
        refused = httpx.post(f"{secured.http_base}{path}", json=body, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path
    allowed = httpx.post(
        f"{secured.http_base}/tokenize", json=body, headers={"authorization": f"Bearer {KEYS['cli']}"}, timeout=10
    )
    assert allowed.status_code == 200 and allowed.json()["count"] >= 1
