"""LoRA adapters (vLLM's --enable-lora, --lora-modules, /v1/load_lora_adapter, /v1/unload_lora_adapter) on the real
server: the vLLM engine on the embedded model, behind the real Envoy and an API key, with adapters built by peft.
What an adapter generates is checked against vLLM's own AsyncLLM running the same adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgen.cli import build_parser
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service, running_service
from tests.support.error_rows import check_row
from tests.support.k8s import render
from tests.support.lora import LORA_FLAGS, MAX_MODEL_LEN, build_adapter, vllm_reference, with_config

pytestmark = pytest.mark.integration

KEY = "lora-test-key"
PROMPT = "The capital of France is"
MAX_TOKENS = 16
STATIC, RUNTIME = "french-lora", "runtime-lora"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        STATIC: build_adapter(model_dir, root / STATIC, seed=1),
        RUNTIME: build_adapter(model_dir, root / RUNTIME, seed=2),
    }


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer.encode(PROMPT))


@pytest.fixture(scope="module")
def reference(model_dir: Path, adapters: dict[str, Path], prompt_ids: list[int]) -> dict[str, str]:
    """Run before the server starts, so the two engines never share the machine's cores."""
    return vllm_reference(model_dir, adapters, prompt_ids, MAX_TOKENS)


@pytest.fixture(scope="module")
def lora_service(adapters: dict[str, Path], reference: dict[str, str]) -> Iterator[Service]:
    flags = (*LORA_FLAGS, "--max-model-len", str(MAX_MODEL_LEN), "--lora-modules", f"{STATIC}={adapters[STATIC]}")
    with running_service("vllm", *flags, env={**os.environ, "CHATGEN_API_KEYS": KEY}) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(lora_service: Service) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{lora_service.http_base}/v1", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def models_stub(lora_service: Service) -> Iterator[pb_grpc.ModelsServiceStub]:
    with grpc.insecure_channel(lora_service.grpc_address) as channel:
        yield pb_grpc.ModelsServiceStub(channel)


GRPC_KEY = (("authorization", f"Bearer {KEY}"),)


def greedy(client: openai.OpenAI, model: str, prompt_ids: list[int]) -> str:
    reply = client.completions.create(model=model, prompt=prompt_ids, max_tokens=MAX_TOKENS, temperature=0)
    assert reply.model == model
    return reply.choices[0].text


def post(service: Service, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{service.http_base}{path}", json=body, headers=headers, timeout=60)


def test_models_list_the_adapter_under_the_base_model(client: openai.OpenAI, adapters: dict[str, Path]) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME, STATIC]
    base, adapter = models
    assert (base.model_extra or {})["parent"] is None
    assert (base.model_extra or {})["root"].endswith("smollm2-135m-instruct-v1")
    assert (adapter.model_extra or {})["parent"] == MODEL_NAME
    assert (adapter.model_extra or {})["root"] == str(adapters[STATIC])
    assert client.models.retrieve(STATIC).id == STATIC


def test_an_adapter_generates_what_vllm_generates_with_it(
    client: openai.OpenAI, prompt_ids: list[int], reference: dict[str, str]
) -> None:
    assert reference[STATIC] != reference[""], "the test adapter must change the model's output"
    assert greedy(client, MODEL_NAME, prompt_ids) == reference[""]
    assert greedy(client, STATIC, prompt_ids) == reference[STATIC]
    # Chat and its stream name the adapter as the model, as vLLM does.
    ask = [{"role": "user", "content": PROMPT}]
    reply = client.chat.completions.create(model=STATIC, messages=ask, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert reply.model == STATIC
    stream = client.chat.completions.create(model=STATIC, messages=ask, max_tokens=4, stream=True)  # type: ignore[arg-type]
    models = {chunk.model for chunk in stream}  # type: ignore[union-attr]
    assert models == {STATIC}


def test_an_adapter_loads_runs_and_unloads_at_runtime(
    client: openai.OpenAI,
    lora_service: Service,
    adapters: dict[str, Path],
    prompt_ids: list[int],
    reference: dict[str, str],
) -> None:
    loaded = client.post(
        "/load_lora_adapter", cast_to=str, body={"lora_name": RUNTIME, "lora_path": str(adapters[RUNTIME])}
    )
    assert loaded == f"Success: LoRA adapter '{RUNTIME}' added successfully."
    assert [m.id for m in client.models.list().data] == [MODEL_NAME, STATIC, RUNTIME]
    assert greedy(client, RUNTIME, prompt_ids) == reference[RUNTIME] != reference[STATIC]
    # The same name again is refused unless in place.
    again = post(lora_service, "/v1/load_lora_adapter", {"lora_name": RUNTIME, "lora_path": str(adapters[RUNTIME])})
    assert again.status_code == 400 and "has already been loaded" in again.json()["error"]["message"]
    check_row("bad-adapter", again.json()["error"])
    in_place = {"lora_name": RUNTIME, "lora_path": str(adapters[RUNTIME]), "load_inplace": True}
    assert post(lora_service, "/v1/load_lora_adapter", in_place).status_code == 200
    unloaded = client.post("/unload_lora_adapter", cast_to=str, body={"lora_name": RUNTIME})
    assert unloaded == f"Success: LoRA adapter '{RUNTIME}' removed successfully."
    with pytest.raises(openai.NotFoundError) as gone:
        greedy(client, RUNTIME, prompt_ids)
    assert (gone.value.code, gone.value.param) == ("model_not_found", "model")
    twice = post(lora_service, "/v1/unload_lora_adapter", {"lora_name": RUNTIME})
    assert twice.status_code == 404 and twice.json()["error"]["param"] == "lora_name"
    check_row("unknown-adapter", twice.json()["error"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r": 64}, "LoRA rank 64 is greater than max_lora_rank 16."),
        ({"use_dora": True}, "vLLM does not yet support DoRA."),
        ({"bias": "all"}, "Adapter bias is not supported."),
    ],
)
def test_an_adapter_vllm_cannot_load_is_a_400_and_the_server_keeps_serving(
    client: openai.OpenAI,
    lora_service: Service,
    adapters: dict[str, Path],
    tmp_path: Path,
    prompt_ids: list[int],
    reference: dict[str, str],
    changes: dict[str, object],
    message: str,
) -> None:
    bad = with_config(adapters[STATIC], tmp_path / "bad", **changes)
    response = post(lora_service, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": str(bad)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == f"Loading lora bad failed: {message}" and error["param"] == "lora_path"
    check_row("bad-adapter", error)
    assert "bad" not in [m.id for m in client.models.list().data]
    assert greedy(client, STATIC, prompt_ids) == reference[STATIC]


def test_load_errors_name_their_field(lora_service: Service, adapters: dict[str, Path], tmp_path: Path) -> None:
    missing = post(lora_service, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/not/an/adapter"})
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["message"] == "Loading lora x failed: No adapter found for /not/an/adapter"
    check_row("unknown-adapter", missing.json()["error"])
    (tmp_path / "adapter_config.json").write_text("this is not json")
    unreadable = post(lora_service, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)})
    assert unreadable.status_code == 400 and unreadable.json()["error"]["param"] == "lora_path"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"lora_name": "x"}, "lora_path", "invalid_request"),
        ({"lora_name": MODEL_NAME, "lora_path": str(adapters[STATIC])}, "lora_name", "invalid_request"),
        ({"lora_name": "x", "lora_path": 5}, "lora_path", "invalid_request"),
        ({"lora_name": "x", "lora_path": str(adapters[STATIC]), "is_3d_lora_weight": True}, "is_3d_lora_weight",
         "unsupported_parameter"),
    ]  # fmt: skip
    for body, param, code in cases:
        response = post(lora_service, "/v1/load_lora_adapter", body)
        assert response.status_code == 400, (body, response.text)
        assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code), body
    assert post(lora_service, "/v1/unload_lora_adapter", {}).json()["error"]["param"] == "lora_name"


def test_the_adapter_endpoints_need_the_api_key(lora_service: Service, adapters: dict[str, Path]) -> None:
    body = {"lora_name": "keyless", "lora_path": str(adapters[RUNTIME])}
    refused = post(lora_service, "/v1/load_lora_adapter", body, key=None)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert post(lora_service, "/v1/unload_lora_adapter", {"lora_name": STATIC}, key="wrong").status_code == 401
    listed = httpx.get(f"{lora_service.http_base}/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in listed["data"]] == [MODEL_NAME, STATIC]


def test_grpc_loads_runs_and_unloads_an_adapter(
    lora_service: Service, models_stub: pb_grpc.ModelsServiceStub, adapters: dict[str, Path], prompt_ids: list[int],
    reference: dict[str, str],
) -> None:  # fmt: skip
    request = pb.LoadLoraAdapterRequest(lora_name="grpc-lora", lora_path=str(adapters[RUNTIME]))
    loaded = models_stub.LoadLoraAdapter(request, metadata=GRPC_KEY, timeout=60)
    assert loaded.message == "Success: LoRA adapter 'grpc-lora' added successfully."
    assert (loaded.model.id, loaded.model.root, loaded.model.parent.string_value) == (
        "grpc-lora", str(adapters[RUNTIME]), MODEL_NAME,
    )  # fmt: skip
    assert models_stub.GetModel(pb.GetModelRequest(id="grpc-lora"), metadata=GRPC_KEY).parent.string_value == MODEL_NAME
    with grpc.insecure_channel(lora_service.grpc_address) as channel:
        generate = pb_grpc.GenerateServiceStub(channel)
        completion = pb.CreateCompletionRequest(model="grpc-lora", max_tokens=MAX_TOKENS, temperature=0)
        completion.prompt.list_value.values.extend(json_values(prompt_ids))
        reply = generate.CreateCompletion(completion, metadata=GRPC_KEY, timeout=120)
    assert (reply.model, reply.choices[0].text) == ("grpc-lora", reference[RUNTIME])
    unload = pb.UnloadLoraAdapterRequest(lora_name="grpc-lora")
    assert models_stub.UnloadLoraAdapter(unload, metadata=GRPC_KEY).message.endswith("removed successfully.")
    with pytest.raises(grpc.RpcError) as info:
        models_stub.UnloadLoraAdapter(unload, metadata=GRPC_KEY)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    error = json.loads(dict(info.value.trailing_metadata())["x-chatgen-error"])["error"]
    assert (error["code"], error["param"]) == ("adapter_not_found", "lora_name")


def json_values(ids: list[int]) -> list[Any]:
    from google.protobuf import struct_pb2

    return [struct_pb2.Value(number_value=i) for i in ids]


def test_metrics_show_the_adapter_requests_ran_with(
    client: openai.OpenAI, lora_service: Service, prompt_ids: list[int]
) -> None:
    greedy(client, STATIC, prompt_ids)
    text = httpx.get(
        f"http://127.0.0.1:{lora_service.metrics_port}/metrics", headers={"authorization": f"Bearer {KEY}"}
    ).text
    series = [line for line in text.splitlines() if line.startswith("vllm:lora_requests_info{")]
    assert any('max_lora="2"' in s and f'running_lora_adapters="{STATIC}"' in s for s in series), series


def test_the_metrics_the_inference_pool_picker_reads_are_served(
    client: openai.OpenAI, lora_service: Service, prompt_ids: list[int]
) -> None:
    """k8s/overlays/inference-pool's endpoint picker scrapes each pod's metrics port and path for the series its
    config names: every one is served, as a gauge of the type and labels GIE's model server protocol gives."""
    overlay = render("inference-pool")
    plugins = {p["type"]: p for p in overlay.picker_config["plugins"]}
    path = plugins["metrics-data-source"]["parameters"]["path"]
    (engine,) = plugins["core-metrics-extractor"]["parameters"]["engineConfigs"]
    # The overlay's port is the one chatgen serve uses unless told otherwise (this server was given a free one).
    port = int(overlay.picker_args["model-server-metrics-port"])
    assert port == build_parser({}, "serve").parse_args(["serve"]).metrics_port
    greedy(client, STATIC, prompt_ids)
    response = httpx.get(
        f"http://127.0.0.1:{lora_service.metrics_port}{path}", headers={"authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    specs = [engine[k] for k in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec")]
    assert specs[:3] == ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]
    for name in [*specs, engine["cacheInfoSpec"]]:
        assert families[name].type == "gauge", name
        assert families[name].samples, name
    (idle,) = families["vllm:num_requests_waiting"].samples
    assert idle.value == 0 and 0 <= families["vllm:kv_cache_usage_perc"].samples[0].value <= 1
    lora = families[engine["loraSpec"]].samples
    assert {"max_lora", "running_lora_adapters", "waiting_lora_adapters"} <= lora[-1].labels.keys()
    cache = families[engine["cacheInfoSpec"]].samples[0].labels
    assert int(cache["block_size"]) > 0 and int(cache["num_gpu_blocks"]) > 0


def test_without_enable_lora_adapters_are_refused(service: Service) -> None:
    """The shared server (either engine) runs without --enable-lora: loading is a 400 that says how to turn it on."""
    response = post(service, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"}, key=None)
    assert response.status_code == 400, response.text
    assert "--enable-lora" in response.json()["error"]["message"]
    check_row("bad-adapter", response.json()["error"])


def test_lora_modules_on_the_transformers_engine_stop_the_start(adapters: dict[str, Path]) -> None:
    cmd = [sys.executable, "-m", "chatgen", "serve", "--engine", "hf", "--no-gateway", "--metrics-port", "0",
           "--grpc-port", "0", "--lora-modules", f"{STATIC}={adapters[STATIC]}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--lora-modules needs the vLLM engine and --enable-lora" in done.stderr + done.stdout
