"""`chatgen serve --frontends 2`: two gRPC server processes over one vLLM engine core (vLLM's multi-API-server
machinery), Envoy spreading streams between them, each frontend serving the --lora-modules; and, on the token
simulator, the supervisor's drain and failure handling."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from xds.data.orca.v3.orca_load_report_pb2 import OrcaLoadReport
from xds.service.orca.v3.orca_pb2 import OrcaLoadReportRequest

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service, running_service
from tests.support.error_rows import check_row
from tests.support.lora import LORA_FLAGS, build_adapter

pytestmark = pytest.mark.integration

ADAPTER = "frontends-lora"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return build_adapter(model_dir, tmp_path_factory.mktemp("adapters") / ADAPTER, seed=1)


@pytest.fixture(scope="module")
def frontends(adapter: Path) -> Iterator[Service]:
    with running_service("vllm", "--frontends", "2", *LORA_FLAGS, "--lora-modules", f"{ADAPTER}={adapter}") as svc:
        yield svc


def by_frontend(service: Service, name: str) -> dict[str, float]:
    """One metric family's samples summed per `frontend` label, from the supervisor's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and 'frontend="' in line:
            frontend = line.split('frontend="', 1)[1].split('"', 1)[0]
            out[frontend] = out.get(frontend, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def chat_request(
    max_tokens: int, text: str = "Count to ten.", model: str = MODEL_NAME
) -> pb.CreateChatCompletionRequest:
    return pb.CreateChatCompletionRequest(
        model=model,
        messages=[pb.ChatMessage(role="user", content=struct_pb2.Value(string_value=text))],
        max_tokens=max_tokens,
        temperature=0,
        ignore_eos=True,
    )


def wait_for(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_the_ready_line_and_the_processes(frontends: Service) -> None:
    ready = next(line for line in frontends.log if "[chatgen] ready:" in line)
    assert "(vllm, 2 frontends)" in ready
    children = psutil.Process(frontends.process.pid).children(recursive=True)
    names = [" ".join(c.cmdline()) for c in children]
    assert sum("multiprocessing.spawn" in n or "ApiServer" in n for n in names) >= 2, names
    assert sum("EngineCore" in c.name() or "EngineCore" in n for c, n in zip(children, names, strict=True)) == 1


def test_greedy_answers_agree_over_rest_grpc_and_both_frontends(frontends: Service) -> None:
    client = frontends.openai()
    texts = set()
    for _ in range(4):
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0
        )
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
        texts.add(reply.choices[0].message.content)
    with grpc.insecure_channel(frontends.grpc_address) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        request = chat_request(8, "Name a colour.")
        request.ClearField("ignore_eos")
        texts.add(stub.CreateChatCompletion(request, timeout=60).choices[0].message.content)
    assert len(texts) == 1, texts


def test_envoy_spreads_concurrent_streams_over_both_frontends(frontends: Service) -> None:
    before = by_frontend(frontends, "chatgen_requests_total")
    client = frontends.openai()

    def stream(_: int) -> int:
        chunks = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Tell a story."}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        return sum(c.usage.completion_tokens for c in chunks if c.usage is not None)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(stream, range(8))) == [24] * 8
    after = by_frontend(frontends, "chatgen_requests_total")
    served = {f: after.get(f, 0) - before.get(f, 0) for f in ("0", "1")}
    assert sum(served.values()) == 8
    assert min(served.values()) >= 2, served


def test_health_on_the_shared_port(frontends: Service) -> None:
    with grpc.insecure_channel(frontends.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_cancelled_stream_and_a_deadline_abort_the_engine_request(frontends: Service) -> None:
    aborted = sum(by_frontend(frontends, "chatgen_requests_aborted_total").values())
    with grpc.insecure_channel(frontends.grpc_address) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        call = stub.StreamChatCompletion(chat_request(1500))
        for i, _ in enumerate(call):
            if i == 3:
                call.cancel()
                break
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamChatCompletion(chat_request(1500), timeout=1.0))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: sum(by_frontend(frontends, "chatgen_engine_running_requests").values()) == 0)
    assert sum(by_frontend(frontends, "chatgen_requests_aborted_total").values()) == aborted + 2


def test_every_frontend_serves_the_lora_modules_and_refuses_runtime_loads(frontends: Service, adapter: Path) -> None:
    texts: dict[tuple[int, str], str] = {}
    for i in (0, 1):
        # Each frontend on its own socket: the shared port would pick one for us.
        with grpc.insecure_channel(f"unix:{frontends.run_dir}/frontend-{i}.sock") as channel:
            models = pb_grpc.ModelsServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
            assert [m.id for m in models.data] == [MODEL_NAME, ADAPTER]
            chat = pb_grpc.ChatServiceStub(channel)
            for model in (MODEL_NAME, ADAPTER):
                request = chat_request(8, "Name a colour.", model)
                request.ClearField("ignore_eos")
                reply = chat.CreateChatCompletion(request, timeout=60)
                assert reply.model == model
                texts[i, model] = reply.choices[0].message.content
            with pytest.raises(grpc.RpcError) as refused:
                load = pb.LoadLoraAdapterRequest(lora_name="late", lora_path=str(adapter))
                pb_grpc.ModelsServiceStub(channel).LoadLoraAdapter(load, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # One engine id per name on every frontend: the same weights answer through either.
    assert texts[0, ADAPTER] == texts[1, ADAPTER] != texts[0, MODEL_NAME] == texts[1, MODEL_NAME]
    for path, body in (
        ("/v1/load_lora_adapter", {"lora_name": "late", "lora_path": str(adapter)}),
        ("/v1/unload_lora_adapter", {"lora_name": ADAPTER}),
    ):
        reply = httpx.post(f"{frontends.http_base}{path}", json=body, timeout=30)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == "lora_name"
        assert "cannot be loaded or unloaded at runtime with --frontends 2" in error["message"]
        check_row("adapter-updates-off", error)
    assert [m.id for m in frontends.openai().models.list().data] == [MODEL_NAME, ADAPTER]


def test_each_frontend_reports_its_own_load_with_the_engines_kv_cache(frontends: Service) -> None:
    for i in (0, 1):
        with grpc.insecure_channel(f"unix:{frontends.run_dir}/frontend-{i}.sock") as channel:
            running = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(chat_request(1500))
            next(running)
            next(running)  # a step or more done: the engine core's statistics have reached this frontend
            stream_metrics = channel.unary_stream(
                "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics",
                request_serializer=OrcaLoadReportRequest.SerializeToString,
                response_deserializer=OrcaLoadReport.FromString,
            )
            reports = stream_metrics(OrcaLoadReportRequest())
            report = next(reports)
            reports.cancel()
            running.cancel()
        assert report.named_metrics["num_requests_running"] == 1, (i, report)
        assert 0 < report.named_metrics["kv_cache_usage_perc"] < 1, (i, report)
        assert report.application_utilization > 0
    assert wait_for(lambda: sum(by_frontend(frontends, "chatgen_engine_running_requests").values()) == 0)


# ---- the supervisor, on the token simulator (no model: fast to start, fixed timing) -----------------------------


@pytest.fixture
def simulated() -> Iterator[Service]:
    # 20 ms to the first token, 20 ms per token, 100 tokens: a stream of ≈ 2 s.
    flags = ("--frontends", "2", "--simulator-timing", "20,20,100", "--served-model-name", MODEL_NAME)
    with running_service("simulator", *flags) as svc:
        yield svc


def test_sigterm_drains_every_frontend_and_exits_0(simulated: Service) -> None:
    client = simulated.openai()
    started = threading.Semaphore(0)

    def stream(_: int) -> int:
        chunks = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        tokens = 0
        for i, chunk in enumerate(chunks):
            if i == 1:
                started.release()
            tokens += chunk.usage.completion_tokens if chunk.usage is not None else 0
        return tokens

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(stream, i) for i in range(4)]
        for _ in running:
            assert started.acquire(timeout=30)
        simulated.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(
            f"{simulated.http_base}/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "late"}]},
            timeout=10,
        )
        assert [f.result(timeout=30) for f in running] == [100] * 4
    assert refused.status_code == 503, refused.text
    assert simulated.process.wait(30) == 0
    assert "draining 2 frontends" in "".join(simulated.log)


def test_a_frontend_that_dies_stops_the_server_with_status_1(simulated: Service) -> None:
    frontends = [c for c in psutil.Process(simulated.process.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(frontends) == 2
    os.kill(frontends[0].pid, signal.SIGKILL)
    assert simulated.process.wait(30) == 1
    assert not frontends[1].is_running() or frontends[1].status() == psutil.STATUS_ZOMBIE
    assert "frontend 0 exited (-9)" in "".join(simulated.log)
