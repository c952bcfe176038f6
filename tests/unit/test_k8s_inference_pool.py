"""k8s/overlays/inference-pool: the GPU replicas as a Gateway API Inference Extension InferencePool with its
endpoint picker. The built-in kinds validate against the Kubernetes schemas; the InferencePool against the
upstream CRD's OpenAPI schema (vendored, tests/support/crds/; its CEL rules are checked here by hand); the
HTTPRoute and the picker's config structurally. Whether a running server serves the metrics the picker reads, on
the port and path named here: tests/integration/test_lora.py."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.k8s import REPO, Rendered, render
from tests.unit.test_k8s import K8S_VERSION

CUSTOM = {"InferencePool", "HTTPRoute"}
CRD = REPO / "tests" / "support" / "crds" / "inference.networking.k8s.io_inferencepools.yaml"


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render("inference-pool")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema (changed in place), with unknown fields an error (as `kubectl apply --validate=strict`
    makes them)."""
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for sub in schema.get("properties", {}).values():
        strict(sub)
    if isinstance(schema.get("items"), dict):
        strict(schema["items"])
    return schema


@functools.cache
def pool_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server's ObjectMeta, checked by it
    return schema


def test_it_is_the_gpu_overlay_plus_the_pool() -> None:
    pool, gpu = render("inference-pool"), render("gpu")
    assert all(doc in pool.docs for doc in gpu.docs)
    added = sorted(d["kind"] for d in pool.docs if d not in gpu.docs)
    expected = ["ConfigMap", "Deployment", "HTTPRoute", "InferencePool", "Role", "RoleBinding"]
    assert added == sorted([*expected, "Service", "ServiceAccount"]), added


def test_built_in_kinds_validate_and_the_pool_matches_its_crd(rendered: Rendered) -> None:
    for doc in rendered.docs:
        if doc["kind"] not in CUSTOM:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pool = rendered.one("InferencePool", "chatgen")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    jsonschema.validate(pool, pool_schema())
    # The CRD's CEL rules: target port numbers unique; a Service picker has a port.
    numbers = [p["number"] for p in pool["spec"]["targetPorts"]]
    assert len(set(numbers)) == len(numbers)
    ref = pool["spec"]["endpointPickerRef"]
    assert ref.get("kind", "Service") != "Service" or "port" in ref


def test_the_crd_schema_rejects_what_the_api_server_would(rendered: Rendered) -> None:
    pool = rendered.one("InferencePool", "chatgen")
    typo, bad_mode, too_many = (copy.deepcopy(pool) for _ in range(3))
    typo["spec"]["targetPort"] = typo["spec"].pop("targetPorts")
    bad_mode["spec"]["endpointPickerRef"]["failureMode"] = "Open"
    too_many["spec"]["targetPorts"] = [{"number": 8000 + i} for i in range(9)]
    for broken in (typo, bad_mode, too_many):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, pool_schema())


def test_the_pool_selects_the_server_pods_on_their_rest_port(rendered: Rendered) -> None:
    pool = rendered.one("InferencePool", "chatgen")["spec"]
    labels = rendered.pod["metadata"]["labels"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    epp_labels = rendered.one("Deployment", "chatgen-epp")["spec"]["template"]["metadata"]["labels"]
    assert not pool["selector"]["matchLabels"].items() <= epp_labels.items()
    # The target is the gateway sidecar's REST port: OpenAI JSON over HTTP, GIE's model server protocol.
    assert pool["targetPorts"] == [{"number": rendered.port("gateway", "http")}]
    assert rendered.port("gateway", "http") == int(rendered.settings["CHATGEN_HTTP_PORT"])
    assert pool["appProtocol"] == "http"


def test_the_picker_is_reachable_where_the_pool_says(rendered: Rendered) -> None:
    ref = rendered.one("InferencePool", "chatgen")["spec"]["endpointPickerRef"]
    service = rendered.one("Service", ref["name"])
    (ext_proc,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    assert ext_proc["appProtocol"] == "kubernetes.io/h2c"  # ext_proc is gRPC
    epp = rendered.one("Deployment", "chatgen-epp")
    pod = epp["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert epp["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[ext_proc["targetPort"]] == 9002  # the picker's --grpc-port default
    args = rendered.picker_args
    assert (args["pool-name"], args["pool-group"]) == ("chatgen", "inference.networking.k8s.io")
    # Its account may read the pool and the pods it picks from.
    binding = rendered.one("RoleBinding", "chatgen-epp")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"]}]
    rules = rendered.one("Role", binding["roleRef"]["name"])["rules"]
    readable = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("inference.networking.k8s.io", "inferencepools"), ("", "pods")} <= readable


def test_the_picker_scrapes_the_servers_metrics_port_and_path(rendered: Rendered) -> None:
    args = rendered.picker_args
    metrics_port = int(rendered.settings["CHATGEN_METRICS_PORT"])
    assert int(args["model-server-metrics-port"]) == metrics_port == rendered.port("server", "metrics")
    config = rendered.picker_config
    (source,) = [p for p in config["plugins"] if p["type"] == "metrics-data-source"]
    assert source["parameters"] == {"scheme": "http", "path": "/metrics"}
    # The picker scrapes without credentials: the pool's servers must not require an API key on /metrics.
    assert "CHATGEN_API_KEYS" not in rendered.environment("server")
    # The config file the picker is given is the mounted ConfigMap's.
    pod = rendered.one("Deployment", "chatgen-epp")["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"].startswith("chatgen-epp")
    assert args["config-file"] == f"{mount['mountPath']}/plugins.yaml"


def test_every_scheduling_plugin_is_defined(rendered: Rendered) -> None:
    config = rendered.picker_config
    assert (config["apiVersion"], config["kind"]) == ("inference.networking.x-k8s.io/v1alpha1", "EndpointPickerConfig")
    defined = {p.get("name", p["type"]) for p in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    refs = [p["pluginRef"] for p in profile["plugins"]]
    assert set(refs) <= defined and {"queue-scorer", "kv-cache-utilization-scorer"} <= set(refs)


def test_the_route_sends_the_openai_paths_to_the_pool(rendered: Rendered) -> None:
    route = rendered.one("HTTPRoute", "chatgen")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chatgen"}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1/"}}]
    assert route["spec"]["parentRefs"][0]["kind"] == "Gateway"
