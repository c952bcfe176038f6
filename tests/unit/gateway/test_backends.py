"""The shared gateway's routing config (`chatgen gateway --backends`): parsing, and the Envoy config it renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chatgen.gateway import RETRY_ON, GatewaySettings, render_config
from chatgen.gateway.backends import Backend, BackendsError, ModelRoute, load_backends, parse_backends
from tests.support.envoy import assert_envoy_accepts

CONFIG = """
models:
- name: model-a
  backends: [10.0.0.1:50051, "chatgen-a-grpc.default.svc:50051"]
- name: Qwen/Qwen3-8B@fp8
  backends: ["[::1]:50052"]
  max_requests: 64
  balance: load_reports
"""


def test_a_config_lists_models_with_their_backends(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(CONFIG)
    assert load_backends(path) == (
        ModelRoute("model-a", (Backend("10.0.0.1", 50051), Backend("chatgen-a-grpc.default.svc", 50051)), 2 * 1024),
        ModelRoute("Qwen/Qwen3-8B@fp8", (Backend("::1", 50052),), 64, "load_reports"),
    )


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ({}, "wants a 'models' list"),
        ({"models": []}, "wants a 'models' list"),
        ({"models": [], "extra": 1}, "wants a 'models' list"),
        ({"models": [{"name": "a", "backends": ["h:1"]}], "extra": 1}, "unknown keys ['extra']"),
        ({"models": [{"name": "a", "backends": []}]}, "backends must list at least one"),
        ({"models": [{"name": "a b", "backends": ["h:1"]}]}, "name must be a model name"),
        ({"models": [{"name": 'a"b', "backends": ["h:1"]}]}, "name must be a model name"),
        ({"models": [{"name": "a", "backends": ["h"]}]}, "'h' is not host:port"),
        ({"models": [{"name": "a", "backends": ["h:99999"]}]}, "is not host:port"),
        ({"models": [{"name": "a", "backends": ["h:1", "h:1"]}]}, "lists a backend twice"),
        ({"models": [{"name": "a", "backends": ["h:1"], "max_requests": 0}]}, "max_requests must be a positive"),
        ({"models": [{"name": "a", "backends": ["h:1"], "weight": 2}]}, "unknown keys ['weight']"),
        ({"models": [{"name": "a", "backends": ["h:1"], "balance": "random"}]}, "balance must be one of"),
        ({"models": [{"name": "a", "backends": ["h:1"], "balance": 1}]}, "balance must be one of"),
        ({"models": [{"name": "a", "backends": ["h:1"]}, {"name": "a", "backends": ["g:1"]}]}, "listed twice"),
    ],
)
def test_a_bad_config_is_refused_naming_what_is_wrong(doc: object, complaint: str) -> None:
    with pytest.raises(BackendsError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_backends(doc)


def test_the_shared_gateway_config_routes_by_model_and_balances_replicas(tmp_path: Path) -> None:
    models = parse_backends(yaml.safe_load(CONFIG))
    settings = GatewaySettings(
        http_host="127.0.0.1", http_port=18000, grpc_host="unused", grpc_port=1, admin_port=19901,
        work_dir=tmp_path, models=models, rendered_at=1700000000,
    )  # fmt: skip
    config = render_config(settings)
    assert_envoy_accepts(config)
    resources = yaml.safe_load(config.read_text())["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    # The body's `model` is parsed into dynamic metadata before the Lua filter reads it.
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.json_to_metadata") == names.index("envoy.filters.http.lua") - 1
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    # The last route holds only the Lua filter's settings, for requests before a model is picked: a 404.
    fallback = routes.pop()
    assert fallback["match"] == {"prefix": "/"} and fallback["direct_response"] == {"status": 404}
    settings_of = [r["metadata"]["filter_metadata"]["envoy.filters.http.lua"]["chatgen"] for r in [*routes, fallback]]
    assert all(s == settings_of[0] for s in settings_of)
    assert settings_of[0]["models"] == ["model-a", "Qwen/Qwen3-8B@fp8"]
    fallback_cards = [json.loads(card) for card in settings_of[0]["model_cards"]]
    assert fallback_cards == [
        {"id": name, "object": "model", "created": 1700000000, "owned_by": "chatgen"}
        for name in ("model-a", "Qwen/Qwen3-8B@fp8")
    ]
    # GET /v1/models asks each model's servers for its card through an internal listener that is this REST API.
    assert settings_of[0]["self_cluster"] == "chatgen_self"
    internal = next(lst for lst in resources["listeners"] if lst["name"] == "models_internal")
    assert "internal_listener" in internal
    inner = internal["filter_chains"][0]["filters"][0]["typed_config"]
    assert inner["route_config"]["virtual_hosts"][0]["routes"] == [*routes, fallback]
    assert inner["http_filters"] == hcm["http_filters"]
    self_cluster = next(c for c in resources["clusters"] if c["name"] == "chatgen_self")
    address = self_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"envoy_internal_address": {"server_listener_name": "models_internal"}}
    assert settings_of[0]["local_errors"]["not_found"] == [404, "not_found_error", "model_not_found", "not_found_error"]
    assert [r["match"]["headers"][0]["string_match"]["exact"] for r in routes] == ["model-a", "Qwen/Qwen3-8B@fp8"]
    assert [r["route"]["cluster"] for r in routes] == ["model_0", "model_1"]
    for route in routes:
        assert route["match"]["headers"][0]["name"] == "x-chatgen-model"
        assert route["route"]["timeout"] == "0s"
        retry = route["route"]["retry_policy"]
        # Only failures where the caller has had nothing yet; never a status a started stream could carry.
        assert retry["retry_on"] == RETRY_ON
        assert set(RETRY_ON.split(",")) == {"connect-failure", "refused-stream", "reset", "unavailable",
                                            "resource-exhausted", "cancelled"}  # fmt: skip
        assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    clusters = {c["name"]: c for c in resources["clusters"]}
    assert set(clusters) == {"model_0", "model_1", "chatgen_self"}  # no single-server cluster
    a = clusters["model_0"]
    assert a["lb_policy"] == "LEAST_REQUEST" and a["type"] == "STRICT_DNS"
    assert "load_balancing_policy" not in a
    # balance: load_reports -- Envoy's client-side weighted round robin on the replicas' ORCA reports.
    weighted = clusters["model_1"]
    assert "lb_policy" not in weighted
    [policy] = weighted["load_balancing_policy"]["policies"]
    cswrr = policy["typed_extension_config"]
    assert cswrr["name"] == "envoy.load_balancing_policies.client_side_weighted_round_robin"
    assert cswrr["typed_config"]["enable_oob_load_report"] is True
    assert cswrr["typed_config"]["oob_reporting_period"] == "1s"
    assert a["health_checks"][0]["grpc_health_check"] == {}
    assert a["common_lb_config"] == {"healthy_panic_threshold": {"value": 0}}
    assert a["outlier_detection"]["consecutive_gateway_failure"] == 3
    http2 = a["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http2["explicit_http_config"] == {"http2_protocol_options": {}}
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for e in a["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [
        {"address": "10.0.0.1", "port_value": 50051},
        {"address": "chatgen-a-grpc.default.svc", "port_value": 50051},
    ]
    assert a["circuit_breakers"]["thresholds"][0] == {"max_requests": 2048, "max_pending_requests": 2048,
                                                      "max_retries": 2048}  # fmt: skip
    assert clusters["model_1"]["circuit_breakers"]["thresholds"][0]["max_requests"] == 64


def test_one_backend_keeps_the_single_server_config(tmp_path: Path) -> None:
    settings = GatewaySettings(
        http_host="127.0.0.1", http_port=18000, grpc_host="127.0.0.1", grpc_port=15051, admin_port=19901,
        work_dir=tmp_path,
    )  # fmt: skip
    resources = yaml.safe_load(render_config(settings).read_text())["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert (route["match"], route["route"]) == ({"prefix": "/"}, {"cluster": "chatgen_grpc", "timeout": "0s"})
    lua_settings = route["metadata"]["filter_metadata"]["envoy.filters.http.lua"]["chatgen"]
    assert "models" not in lua_settings and lua_settings["http_errors"]["503"] == [
        "service_unavailable_error",
        "unavailable",
        "overloaded_error",
    ]
    assert [c["name"] for c in resources["clusters"]] == ["chatgen_grpc"]


def test_affinity_hashes_each_conversation_to_a_replica_within_a_load_bound(tmp_path: Path) -> None:
    doc = {"models": [{"name": "m", "backends": ["10.0.0.1:1", "10.0.0.2:1"], "balance": "affinity"},
                      {"name": "n", "backends": ["10.0.0.3:1"]}]}  # fmt: skip
    settings = GatewaySettings(
        http_host="127.0.0.1", http_port=18000, grpc_host="unused", grpc_port=1, admin_port=19901,
        work_dir=tmp_path, models=parse_backends(doc),
    )  # fmt: skip
    config = render_config(settings)
    assert_envoy_accepts(config)
    resources = yaml.safe_load(config.read_text())["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    # What may name a conversation is parsed from the body beside the model.
    [parse] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.json_to_metadata"]
    keys = {
        r["on_present"]["key"]: [s["key"] for s in r["selectors"]]
        for r in parse["typed_config"]["request_rules"]["rules"]
    }
    assert keys == {
        "model": ["model"], "prompt_cache_key": ["prompt_cache_key"], "user": ["user"],
        "metadata_user_id": ["metadata", "user_id"], "previous_response_id": ["previous_response_id"],
    }  # fmt: skip
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    # Only the model balanced by affinity hashes, on the key the Lua filter found.
    assert routes[0]["route"]["hash_policy"] == [{"header": {"header_name": "x-chatgen-session"}}]
    assert "hash_policy" not in routes[1]["route"]
    clusters = {c["name"]: c for c in resources["clusters"]}
    [policy] = clusters["model_0"]["load_balancing_policy"]["policies"]
    maglev = policy["typed_extension_config"]
    assert maglev["name"] == "envoy.load_balancing_policies.maglev" and "lb_policy" not in clusters["model_0"]
    assert maglev["typed_config"]["consistent_hashing_lb_config"] == {"hash_balance_factor": 150}
    # Health checks and outlier ejection as for any model: a replica that leaves gives its keys to the others.
    assert clusters["model_0"]["health_checks"] == clusters["model_1"]["health_checks"]
    assert clusters["model_1"]["lb_policy"] == "LEAST_REQUEST"
