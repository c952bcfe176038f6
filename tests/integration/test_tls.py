"""TLS on the gRPC port and the REST listener (`--tls-cert/--tls-key`), with a self-signed certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, TEST_ENGINES, Service, running_service
from tests.support.certs import CertPair, self_signed

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure(certs: CertPair, model_dir: Path) -> Iterator[Service]:
    with running_service(TEST_ENGINES[0], "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)) as svc:
        yield svc


def https_base(service: Service) -> str:
    return service.http_base.replace("http://", "https://")


def test_ready_line_names_tls(secure: Service) -> None:
    ready = next(line for line in secure.log if "[chatgen] ready:" in line)
    assert "gRPC (TLS)" in ready and "https://" in ready


def test_grpc_over_tls_answers_and_plaintext_is_refused(secure: Service, certs: CertPair) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.cert.read_bytes())
    with grpc.secure_channel(secure.grpc_address, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        request = pb.CreateChatCompletionRequest(
            model=MODEL_NAME, messages=[pb.ChatMessage(role="user")], temperature=0, max_tokens=8
        )
        request.messages[0].content.string_value = ASK[0]["content"]
        reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(request, timeout=60)
        assert reply.choices[0].message.content
        chunks = list(pb_grpc.ChatServiceStub(channel).StreamChatCompletion(request, timeout=60))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with grpc.insecure_channel(secure.grpc_address) as plain:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rest_over_tls_with_the_openai_sdk(secure: Service, certs: CertPair) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=certs.cert), timeout=120) as http_client:
        client = openai.OpenAI(
            api_key="unused", base_url=f"{https_base(secure)}/v1", http_client=http_client, max_retries=0
        )
        assert [m.id for m in client.models.list()] == [MODEL_NAME]
        reply = client.chat.completions.create(model=MODEL_NAME, messages=ASK, temperature=0, max_tokens=20)  # type: ignore[arg-type]
        assert "Paris" in (reply.choices[0].message.content or "")
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=ASK,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=20,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == reply.choices[0].message.content


def test_rest_over_http2_tls(secure: Service, certs: CertPair) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=certs.cert), http2=True, timeout=60) as client:
        response = client.get(f"{https_base(secure)}/v1/models")
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"


def test_rest_rejects_unverified_and_plaintext_clients(secure: Service) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https_base(secure)}/v1/models", timeout=10)  # default trust store: self-signed is refused
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.get(f"{secure.http_base}/v1/models", timeout=10)


def test_bad_tls_files_stop_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [sys.executable, "-m", "chatgen", "serve", "--tls-cert", str(missing), "--tls-key", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cannot use --tls-cert" in result.stderr


async def test_python_clients_take_tls_credentials(secure: Service, certs: CertPair) -> None:
    from chatgen.client import AsyncChatgenClient, ChatgenClient

    credentials = grpc.ssl_channel_credentials(root_certificates=certs.cert.read_bytes())
    with ChatgenClient(secure.grpc_address, credentials=credentials) as client:
        assert "Paris" in client.chat(ASK, temperature=0, max_tokens=20).content
    async with AsyncChatgenClient(secure.grpc_address, credentials=credentials) as aclient:
        assert [m.id for m in await aclient.models()] == [MODEL_NAME]
