"""The Envoy config, built as data and written as JSON (which Envoy reads as it reads YAML): the REST listener
and its filters, Envoy's own error replies in OpenAI's shape, the Lua filter's settings, and the optional stats
listener. Routes and clusters: routes.py."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatgen.errors import FAILURES, GATEWAY_REPLIES, Failure, anthropic_error, openai_error
from chatgen.gateway import request_types, routes
from chatgen.gateway.descriptors import write_descriptor_set
from chatgen.gateway.request_types import write_request_types
from chatgen.gateway.settings import GatewaySettings
from chatgen.tls import TlsFiles
from chatgen.transport.load_report import ORCA_TRAILER

LUA_FILTER = "envoy.filters.http.lua"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CONFIG_FILE = "envoy.json"
DESCRIPTOR_FILE = "chatgen.pb"
MAX_REQUEST_HEADERS_KB = 16


def typed(type_name: str, **config: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **config}


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def lua_source() -> Path:
    """The Lua filter, shipped with the package and read by Envoy as it is (in a checkout, a link to
    gateway/openai_compat.lua; a wheel carries the file itself)."""
    return Path(str(importlib.resources.files("chatgen.gateway") / "openai_compat.lua"))


@dataclass(frozen=True)
class ConfigFiles:
    """The files a config names: the transcoder's descriptor set, the Lua filter (beside it the modules it
    requires: json_types.lua, replies.lua and dkjson.lua), and the request types its body check reads. At run
    time they are the installed package's and the work directory's (render_config); the configs checked in under
    gateway/ name the checkout's."""

    descriptor: Path
    lua: Path
    request_types: Path


# The Messages API's paths, whose errors are Anthropic's.
ANTHROPIC_PREFIX = "/v1/messages"


def _openai_kind(failure: Failure) -> list[str]:
    """[OpenAI error `type`, `code`, Anthropic error `type`] of a failure kind."""
    return [FAILURES[failure].openai_type, failure.value, FAILURES[failure].anthropic_type]


def lua_settings(settings: GatewaySettings, files: ConfigFiles) -> dict[str, Any]:
    """The Lua filter's settings, from chatgen.errors and the routing config (see openai_compat.lua)."""
    out: dict[str, Any] = {
        "lua_path": str(files.lua.parent / "?.lua"),
        "request_types": str(files.request_types),
        "http_errors": {str(status): _openai_kind(failure) for status, failure in GATEWAY_REPLIES.items()},
        "local_errors": {
            key: [FAILURES[f].http_status, *_openai_kind(f)]
            for key, f in (
                ("not_found", Failure.MODEL_NOT_FOUND),
                ("unknown_path", Failure.NOT_FOUND),
                ("invalid", Failure.INVALID_REQUEST),
                ("media_type", Failure.UNSUPPORTED_MEDIA_TYPE),
                ("unsupported", Failure.UNSUPPORTED),
            )
        },
    }
    if settings.models:
        out["models"] = [m.name for m in settings.models]
        # A model whose replicas do not answer is listed with what the gateway knows of it.
        out["model_cards"] = routes.fallback_cards(settings.models, settings.rendered_at)
        out["self_cluster"] = routes.SELF_CLUSTER
    return out


def _error_body(message: str, failure: Failure, anthropic: bool) -> dict[str, Any]:
    body = anthropic_error(failure, message) if anthropic else openai_error(failure, message)
    return {"content_type": "application/json", "json_format": body}


def _status_value(status: int, key: str) -> dict[str, Any]:
    return {"default_value": status, "runtime_key": f"chatgen.local_reply.{key}"}


def _status_is(status: int | None, key: str) -> dict[str, Any]:
    """A status filter: this status, or (None) any error status."""
    op = "EQ" if status is not None else "GE"
    return {"status_code_filter": {"comparison": {"op": op, "value": _status_value(status or 400, key)}}}


def local_reply_mappers(max_body_bytes: int) -> list[dict[str, Any]]:
    """Envoy's own error replies (upstream down, unknown path, body too large) in OpenAI's error shape, and on the
    Messages API's paths in Anthropic's (the first mapper that matches wins)."""
    on_messages = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": ANTHROPIC_PREFIX}}}}
    anthropic = [
        {**mapper, "filter": {"and_filter": {"filters": [on_messages, mapper["filter"]]}}}
        for mapper in _mappers(max_body_bytes, anthropic=True)
    ]
    return anthropic + _mappers(max_body_bytes, anthropic=False)


def _mappers(max_body_bytes: int, anthropic: bool) -> list[dict[str, Any]]:
    too_large = FAILURES[Failure.REQUEST_TOO_LARGE].http_status
    mappers: list[dict[str, Any]] = [
        # Envoy's circuit breaker to the server tripped (upstream overflow): the same 429 the server sends itself.
        {
            "filter": {"response_flag_filter": {"flags": ["UO"]}},
            "status_code": FAILURES[Failure.OVERLOADED].http_status,
            "headers_to_add": [
                {"header": {"key": "retry-after", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
            "body_format_override": _error_body(
                "The server is at capacity; retry later", Failure.OVERLOADED, anthropic
            ),
        },
        {
            "filter": _status_is(too_large, "too_large"),
            "body_format_override": _error_body(
                f"The request body is larger than this server accepts ({max_body_bytes} bytes)",
                Failure.REQUEST_TOO_LARGE,
                anthropic,
            ),
        },
    ]
    for status, failure in GATEWAY_REPLIES.items():
        if failure is not Failure.REQUEST_TOO_LARGE:
            mappers.append(
                {
                    "filter": _status_is(status, str(status)),
                    "body_format_override": _error_body("%LOCAL_REPLY_BODY%", failure, anthropic),
                }
            )
    # Envoy's other 4xx replies (408 for a client too slow to send its request, 426 for HTTP/1.0, ...) are the
    # client's fault, as OpenAI types it; anything else is Envoy's own failure.
    client_fault = {
        "and_filter": {
            "filters": [
                _status_is(None, "client_fault_low"),
                {"status_code_filter": {"comparison": {"op": "LE", "value": _status_value(499, "client_fault_high")}}},
            ]
        }
    }
    mappers.append(
        {
            "filter": client_fault,
            "body_format_override": _error_body("%LOCAL_REPLY_BODY%", Failure.INVALID_REQUEST, anthropic),
        }
    )
    mappers.append(
        {
            "filter": _status_is(None, "any"),
            "body_format_override": _error_body("%LOCAL_REPLY_BODY%", Failure.INTERNAL, anthropic),
        }
    )
    return mappers


# What the shared gateway reads of a request body: the model it routes on, and what may name the conversation the
# request is of (for a model balanced by affinity): OpenAI's `prompt_cache_key` and `user`, the Messages API's
# `metadata.user_id`, the Responses API's `previous_response_id`. The Lua filter reads them as metadata_user_id etc.
REQUEST_KEYS = (("model",), ("prompt_cache_key",), ("user",), ("metadata", "user_id"), ("previous_response_id",))


def _model_to_metadata() -> dict[str, Any]:
    """The shared gateway (--backends) routes on the body's `model` (and a conversation's key): this filter parses
    them into dynamic metadata for the Lua filter (a single server's gateway reads no body)."""
    return {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": typed(
            "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            request_rules={
                "rules": [
                    {
                        "selectors": [{"key": key} for key in path],
                        "on_present": {"metadata_namespace": "chatgen.request", "key": "_".join(path)},
                    }
                    for path in REQUEST_KEYS
                ],
                # The Lua filter refuses any other media type (415).
                "allow_content_types": ["application/json"],
                "allow_empty_content_type": True,
            },
        ),
    }


def http_filters(files: ConfigFiles, shared: bool) -> list[dict[str, Any]]:
    filters = [
        # GET /healthz is answered by Envoy itself (503 while it drains): the gateway's own probe, which needs
        # no API key and does not reach the model.
        {
            "name": "envoy.filters.http.health_check",
            "typed_config": typed(
                "envoy.extensions.filters.http.health_check.v3.HealthCheck",
                pass_through_mode=False,
                headers=[{"name": ":path", "string_match": {"exact": "/healthz"}}],
            ),
        },
        {
            "name": LUA_FILTER,
            "typed_config": typed(
                "envoy.extensions.filters.http.lua.v3.Lua", default_source_code={"filename": str(files.lua)}
            ),
        },
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": typed(
                "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                proto_descriptor=str(files.descriptor),
                services=[
                    "chatgen.v1.ChatService",
                    "chatgen.v1.GenerateService",
                    "chatgen.v1.MessagesService",
                    "chatgen.v1.ResponsesService",
                    "chatgen.v1.TokenizerService",
                    "chatgen.v1.ServingService",
                    "chatgen.v1.ModelsService",
                ],
                convert_grpc_status=True,
                request_validation_options={"reject_unknown_method": True},
                # OpenAI's field names and zero values (`"index": 0`, `"choices": []`); a stream as Server-Sent
                # Events, `data: <chunk JSON>` each (the Lua filter ends it with `data: [DONE]`).
                print_options={
                    "preserve_proto_field_names": True,
                    "always_print_primitive_fields": True,
                    "stream_sse_style_delimited": True,
                },
            ),
        },
        {"name": "envoy.filters.http.router", "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")},
    ]
    if shared:
        # Before the Lua filter, which reads what it parsed.
        filters.insert(1, _model_to_metadata())
    return filters


def _transport_socket(context_type: str, common: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(f"envoy.extensions.transport_sockets.tls.v3.{context_type}", common_tls_context=common),
    }


def listener_tls(tls: TlsFiles | None) -> dict[str, Any] | None:
    if tls is None:
        return None
    certificate = {"certificate_chain": {"filename": str(tls.cert)}, "private_key": {"filename": str(tls.key)}}
    return _transport_socket(
        "DownstreamTlsContext", {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [certificate]}
    )


def upstream_tls(enabled: bool) -> dict[str, Any] | None:
    # No validation_context: see chatgen.tls for why the loopback hop is encrypted but not verified.
    return _transport_socket("UpstreamTlsContext", {"alpn_protocols": ["h2"]}) if enabled else None


def _rest_manager(settings: GatewaySettings, files: ConfigFiles, stat_prefix: str) -> dict[str, Any]:
    """The REST API's HTTP connection manager: routes, error replies and filters."""
    return typed(
        HCM_TYPE.removeprefix("type.googleapis.com/"),
        stat_prefix=stat_prefix,
        codec_type="AUTO",
        # Every call has an x-request-id (the caller's, else one Envoy makes up), passed to chatgen as metadata
        # (its request log and metrics) and returned on the response, errors included.
        always_set_request_id_in_response=True,
        preserve_external_request_id=True,
        # Streams of a slow model can be quiet for a while, but not forever.
        stream_idle_timeout="300s",
        # A client gets this long to send its headers and its whole body (slow senders hold no slot forever);
        # generation time is not limited here (x-request-timeout-ms does that per request).
        request_headers_timeout="10s",
        request_timeout="60s",
        # Headers over this are Envoy's 431, a client error; everything under it passes the gRPC server's own
        # metadata limit (server.MAX_METADATA_BYTES), whose RESOURCE_EXHAUSTED would read as overload (429).
        max_request_headers_kb=MAX_REQUEST_HEADERS_KB,
        common_http_protocol_options={"idle_timeout": "600s"},
        http2_protocol_options={"max_concurrent_streams": 256},
        route_config={
            "name": "chatgen",
            # The servers' load reports are for the balancer (Envoy reads them from the upstream's response as it
            # arrives), not for REST callers.
            "response_headers_to_remove": [ORCA_TRAILER],
            "virtual_hosts": [
                {
                    "name": "chatgen",
                    "domains": ["*"],
                    "routes": routes.rest_routes(settings, lua_settings(settings, files)),
                }
            ],
        },
        local_reply_config={"mappers": local_reply_mappers(settings.max_body_bytes)},
        http_filters=http_filters(files, shared=bool(settings.models)),
    )


def rest_listener(settings: GatewaySettings, files: ConfigFiles) -> dict[str, Any]:
    manager = _rest_manager(settings, files, "rest")
    return {
        "name": "rest",
        "address": socket_address(settings.http_host, settings.http_port),
        "per_connection_buffer_limit_bytes": settings.max_body_bytes,
        # TLS when chatgen serve is given --tls-cert/--tls-key (null: plain HTTP).
        "filter_chains": [
            {
                "transport_socket": listener_tls(settings.tls),
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
            }
        ],
    }


# The shared gateway's GET /v1/models is the model cards its replicas give (GET /v1/models/{id} of each model,
# asked through an internal listener that is the REST listener again), so that it lists what a single server
# lists: one model card, from the servers that serve it.
MODELS_LISTENER = "models_internal"
_INTERNAL_LISTENERS = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": typed("envoy.extensions.bootstrap.internal_listener.v3.InternalListener"),
}


def models_listener(settings: GatewaySettings, files: ConfigFiles) -> dict[str, Any]:
    manager = _rest_manager(settings, files, "internal")
    return {
        "name": MODELS_LISTENER,
        "internal_listener": {},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def stats_listener(settings: GatewaySettings) -> dict[str, Any]:
    """--envoy-stats-port: GET /stats/prometheus of the admin, and nothing else of it. Istio exposes Envoy's
    stats the same way (a listener whose one route leads to the admin's /stats/prometheus)."""
    route = {
        "match": {"path": "/stats/prometheus", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "route": {"cluster": routes.ADMIN_CLUSTER},
    }
    manager = typed(
        HCM_TYPE.removeprefix("type.googleapis.com/"),
        stat_prefix="stats",
        route_config={"virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": [route]}]},
        http_filters=[
            {
                "name": "envoy.filters.http.router",
                "typed_config": typed("envoy.extensions.filters.http.router.v3.Router"),
            }
        ],
    )
    return {
        "name": "stats",
        "address": socket_address(settings.http_host, settings.stats_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def envoy_config(settings: GatewaySettings, files: ConfigFiles) -> dict[str, Any]:
    listeners = [rest_listener(settings, files)]
    clusters = routes.upstream_clusters(settings, upstream_tls(settings.upstream_tls))
    if settings.stats_port:
        listeners.append(stats_listener(settings))
        clusters.insert(0, routes.static_cluster(routes.ADMIN_CLUSTER, [("127.0.0.1", settings.admin_port)]))
    extra: dict[str, Any] = {}
    if settings.models:
        listeners.append(models_listener(settings, files))
        clusters.append(routes.internal_cluster(routes.SELF_CLUSTER, MODELS_LISTENER))
        extra["bootstrap_extensions"] = [_INTERNAL_LISTENERS]
    return {
        **extra,
        "admin": {"address": socket_address("127.0.0.1", settings.admin_port)},
        # Beyond this many client connections Envoy stops accepting (memory stays bounded under a connection flood).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        max_active_downstream_connections=settings.max_connections,
                    ),
                }
            ]
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def render_config(settings: GatewaySettings) -> Path:
    """Write the descriptor set and the config into work_dir; return the config's path."""
    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    files = ConfigFiles(
        descriptor=write_descriptor_set(work / DESCRIPTOR_FILE),
        lua=lua_source(),
        request_types=write_request_types(work / request_types.FILE),
    )
    path = work / CONFIG_FILE
    path.write_text(json.dumps(envoy_config(settings, files), indent=1))
    return path
