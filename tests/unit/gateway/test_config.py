from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from chatgen.cli import build_parser
from chatgen.gateway import GatewaySettings, auto_envoy_workers, envoy_command, render_config, usable_cpus
from chatgen.transport.load_report import ORCA_TRAILER
from tests.support.envoy import assert_envoy_accepts


def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(
        http_host="127.0.0.1", http_port=18000, grpc_host="127.0.0.1", grpc_port=15051, admin_port=19901,
        work_dir=tmp_path,
    )  # fmt: skip


def test_rendered_config_passes_envoy_validation(tmp_path: Path) -> None:
    assert_envoy_accepts(render_config(settings(tmp_path)))


def test_filter_order_and_transcoder_options(tmp_path: Path) -> None:
    doc = yaml.safe_load(render_config(settings(tmp_path)).read_text())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    # The health check answers /healthz before anything else; Lua runs before the transcoder. A single server's
    # gateway parses no body (the shared gateway's json_to_metadata: test_backends.py).
    assert names == [
        "envoy.filters.http.health_check",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    health = hcm["http_filters"][0]["typed_config"]
    assert health["pass_through_mode"] is False
    assert health["headers"] == [{"name": ":path", "string_match": {"exact": "/healthz"}}]
    transcoder = hcm["http_filters"][2]["typed_config"]
    # Streams as Server-Sent Events (the Lua filter ends them with `data: [DONE]`).
    assert transcoder["print_options"] == {
        "preserve_proto_field_names": True,
        "always_print_primitive_fields": True,
        "stream_sse_style_delimited": True,
    }
    assert Path(transcoder["proto_descriptor"]).is_file()
    every = hcm["local_reply_config"]["mappers"]
    # The Messages API's paths first, with Anthropic's error bodies; then the same mappers for every other path.
    half = len(every) // 2
    anthropic, mappers = every[:half], every[half:]
    on_messages = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/v1/messages"}}}}
    for theirs, ours in zip(anthropic, mappers, strict=True):
        assert theirs["filter"] == {"and_filter": {"filters": [on_messages, ours["filter"]]}}
        body = theirs["body_format_override"]["json_format"]
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert anthropic[0]["body_format_override"]["json_format"]["error"]["type"] == "rate_limit_error"
    assert anthropic[-1]["body_format_override"]["json_format"]["error"]["type"] == "api_error"
    # The circuit breaker's overflow is matched first: it must become 429, not the generic 503 mapping.
    assert mappers[0]["filter"] == {"response_flag_filter": {"flags": ["UO"]}}
    assert mappers[0]["status_code"] == 429
    statuses = [m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] for m in mappers[1:-2]]
    assert statuses == [413, 400, 401, 404, 431, 429, 500, 503, 504]
    # Then any other 4xx is the client's fault, anything else Envoy's.
    client, other = mappers[-2:]
    bounds = [f["status_code_filter"]["comparison"] for f in client["filter"]["and_filter"]["filters"]]
    assert [(b["op"], b["value"]["default_value"]) for b in bounds] == [("GE", 400), ("LE", 499)]
    assert client["body_format_override"]["json_format"]["error"]["type"] == "invalid_request_error"
    assert other["body_format_override"]["json_format"]["error"]["type"] == "server_error"


def test_rest_callers_get_no_load_reports(tmp_path: Path) -> None:
    doc = yaml.safe_load(render_config(settings(tmp_path)).read_text())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["route_config"]["response_headers_to_remove"] == [ORCA_TRAILER]


def test_limits_reach_envoy(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s = GatewaySettings(**{**s.__dict__, "max_body_bytes": 12345, "max_connections": 77, "max_upstream_requests": 99})
    doc = yaml.safe_load(render_config(s).read_text())
    monitor = doc["overload_manager"]["resource_monitors"][0]["typed_config"]
    assert monitor["max_active_downstream_connections"] == 77
    assert doc["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == 12345
    cluster = doc["static_resources"]["clusters"][0]
    assert cluster["circuit_breakers"]["thresholds"][0] == {"max_requests": 99, "max_pending_requests": 99}


def test_tls_config_passes_envoy_validation(tmp_path: Path) -> None:
    from chatgen.tls import tls_files
    from tests.support.certs import self_signed

    pair = self_signed(tmp_path / "certs")
    tls = tls_files(str(pair.cert), str(pair.key))
    s = GatewaySettings(**{**settings(tmp_path).__dict__, "tls": tls, "upstream_tls": True})
    config = render_config(s)
    doc = yaml.safe_load(config.read_text())
    chain = doc["static_resources"]["listeners"][0]["filter_chains"][0]
    context = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificates"][0]["certificate_chain"]["filename"] == str(pair.cert)
    assert doc["static_resources"]["clusters"][0]["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert_envoy_accepts(config)


def test_plain_config_has_no_tls(tmp_path: Path) -> None:
    doc = yaml.safe_load(render_config(settings(tmp_path)).read_text())
    assert doc["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] is None
    assert doc["static_resources"]["clusters"][0]["transport_socket"] is None


def test_the_stats_listener_exposes_only_prometheus_stats(tmp_path: Path) -> None:
    plain = yaml.safe_load(render_config(settings(tmp_path)).read_text())["static_resources"]
    assert [lst["name"] for lst in plain["listeners"]] == ["rest"]
    assert "envoy_admin" not in [c["name"] for c in plain["clusters"]]

    config = render_config(replace(settings(tmp_path / "stats"), stats_port=19401))
    assert_envoy_accepts(config)
    resources = yaml.safe_load(config.read_text())["static_resources"]
    stats = next(lst for lst in resources["listeners"] if lst["name"] == "stats")
    assert stats["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19401}
    hcm = stats["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert len(routes) == 1 and routes[0]["match"]["path"] == "/stats/prometheus"
    assert routes[0]["route"] == {"cluster": "envoy_admin"}
    admin = next(c for c in resources["clusters"] if c["name"] == "envoy_admin")
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "127.0.0.1", "port_value": 19901}  # the admin port, loopback only


@pytest.mark.parametrize(("cpus", "workers"), [(0.5, 1), (2, 1), (7.9, 1), (8, 2), (12, 3), (16, 4), (96, 4)])
def test_auto_envoy_workers_one_per_four_cpus(cpus: float, workers: int) -> None:
    assert auto_envoy_workers(cpus) == workers


def test_usable_cpus_honours_a_cgroup_cpu_limit(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")
    assert usable_cpus(limit) == min(affinity, 1.5)
    limit.write_text("max 100000\n")
    assert usable_cpus(limit) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity


def test_envoy_concurrency_flag_reaches_envoys_command_line(tmp_path: Path) -> None:
    def command(*argv: str, environ: dict[str, str] | None = None) -> list[str]:
        args = build_parser(environ or {}, "serve").parse_args(["serve", *argv])
        cmd = envoy_command(replace(settings(tmp_path), concurrency=args.envoy_concurrency), tmp_path / "envoy.json")
        return cmd[cmd.index("--concurrency") : cmd.index("--concurrency") + 2]

    assert command() == ["--concurrency", str(auto_envoy_workers(usable_cpus()))]
    assert command("--envoy-concurrency", "3") == ["--concurrency", "3"]
    assert command(environ={"CHATGEN_ENVOY_CONCURRENCY": "AUTO"}) == command()
    with pytest.raises(SystemExit):
        command("--envoy-concurrency", "0")


def test_frontends_are_the_local_cluster_least_request_over_their_unix_sockets(tmp_path: Path) -> None:
    """`chatgen serve --frontends 2`: Envoy reaches each frontend on its own socket, plaintext even where the
    public gRPC port is TLS, and Envoy itself accepts the config."""
    sockets = (str(tmp_path / "frontend-0.sock"), str(tmp_path / "frontend-1.sock"))
    s = replace(settings(tmp_path), local_endpoints=sockets, upstream_tls=True)
    config = yaml.safe_load(render_config(s).read_text())
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "chatgen_grpc"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["transport_socket"] is None
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"] for e in endpoints] == [{"pipe": {"path": p}} for p in sockets]
    assert_envoy_accepts(render_config(s))


def test_one_server_is_its_grpc_port(tmp_path: Path) -> None:
    config = yaml.safe_load(render_config(settings(tmp_path)).read_text())
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "chatgen_grpc"]
    assert "lb_policy" not in cluster
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert "socket_address" in endpoint["endpoint"]["address"]
