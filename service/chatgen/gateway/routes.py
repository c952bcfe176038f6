"""Routes and clusters: one chatgen gRPC server, or for the shared gateway (`--backends`) a route and a cluster
of replicas per model, picked by the x-chatgen-model header the Lua filter sets from the body's `model`."""

from __future__ import annotations

import json
from typing import Any

from chatgen.gateway.backends import ModelRoute
from chatgen.gateway.settings import GatewaySettings

SINGLE_CLUSTER = "chatgen_grpc"
# The shared gateway's way back into its own REST listener (config.MODELS_LISTENER).
SELF_CLUSTER = "chatgen_self"
ADMIN_CLUSTER = "envoy_admin"
LUA_FILTER = "envoy.filters.http.lua"
# Where the Lua filter puts the key of the conversation a request belongs to (openai_compat.lua: session_key).
SESSION_HEADER = "x-chatgen-session"
# Bounded-load consistent hashing (Mirrokni et al.; Envoy's hash_balance_factor, percent): no replica of a model
# balanced by affinity gets more than 1.5 times the mean of the requests in flight; a key whose replica is past
# it goes on to the next. Lower spreads a hot conversation sooner and so loses its cache more often.
AFFINITY_LOAD_BOUND = 150
# Which failures a shared gateway retries on another replica: only those where the caller has had nothing yet
# (Envoy never retries once response headers went downstream, so a started stream is never retried): no
# connection, a stream refused or reset before any response, a replica that is draining (UNAVAILABLE) or full
# (RESOURCE_EXHAUSTED), a call the replica's gRPC server cancelled as it stopped (CANCELLED: a call that reached it
# in the last moment of a drain; the gateway itself is still waiting, so only the replica can have cancelled it). A
# request cut before its first chunk may have run on the first replica: it costs compute twice, never output.
RETRY_ON = "connect-failure,refused-stream,reset,unavailable,resource-exhausted,cancelled"
_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_HTTP2_UPSTREAM = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def fallback_cards(models: tuple[ModelRoute, ...], created: int) -> list[str]:
    """The shared gateway's GET /v1/models lists each model's card as its servers give it; these (OpenAI's model
    object, from the routing config) stand in for a model none of whose replicas answers."""
    return [
        json.dumps({"id": m.name, "object": "model", "created": created, "owned_by": "chatgen"}, separators=(",", ":"))
        for m in models
    ]


def internal_cluster(name: str, listener: str) -> dict[str, Any]:
    """A cluster whose one endpoint is an internal listener of this Envoy."""
    endpoint = {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": listener}}}}
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _with_settings(route: dict[str, Any], lua_settings: dict[str, Any]) -> dict[str, Any]:
    """The Lua filter reads its settings from the route it is on (handle:metadata())."""
    return {**route, "metadata": {"filter_metadata": {LUA_FILTER: {"chatgen": lua_settings}}}}


def rest_routes(settings: GatewaySettings, lua_settings: dict[str, Any]) -> list[dict[str, Any]]:
    if not settings.models:
        # No route timeout: a long generation is a legitimate long request.
        single: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": SINGLE_CLUSTER, "timeout": "0s"}}
        return [_with_settings(single, lua_settings)]
    out = []
    for i, model in enumerate(settings.models):
        header = {"name": "x-chatgen-model", "string_match": {"exact": model.name}}
        retry_policy = {
            "retry_on": RETRY_ON,
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": _PREVIOUS_HOSTS},
                }
            ],
            "host_selection_retry_max_attempts": 5,
        }
        route: dict[str, Any] = {
            "match": {"prefix": "/", "headers": [header]},
            "route": {"cluster": f"model_{i}", "timeout": "0s", "retry_policy": retry_policy},
        }
        if model.balance == "affinity":
            # The conversation's key, as the Lua filter found it (absent: no key, a random replica).
            route["route"]["hash_policy"] = [{"header": {"header_name": SESSION_HEADER}}]
        out.append(_with_settings(route, lua_settings))
    # Before the Lua filter has picked a model (and for paths no model serves): no cluster, the settings only.
    out.append(_with_settings({"match": {"prefix": "/"}, "direct_response": {"status": 404}}, lua_settings))
    return out


def _endpoints(name: str, addresses: list[tuple[str, int]]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}} for h, p in addresses]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}


def _pipe_endpoints(name: str, paths: tuple[str, ...]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"pipe": {"path": path}}}} for path in paths]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}


def static_cluster(name: str, addresses: list[tuple[str, int]]) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": _endpoints(name, addresses)}


def upstream_clusters(settings: GatewaySettings, tls: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not settings.models:
        return [_local_cluster(settings, tls)]
    return [_model_cluster(f"model_{i}", model, tls) for i, model in enumerate(settings.models)]


def _local_cluster(settings: GatewaySettings, tls: dict[str, Any] | None) -> dict[str, Any]:
    """The server this Envoy fronts: its gRPC port, or the unix socket of each of its frontends."""
    limit = settings.max_upstream_requests
    cluster: dict[str, Any] = {
        "name": SINGLE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "2s",
        # TLS when the gRPC port is TLS (null: plaintext h2).
        "transport_socket": tls,
        # Matches the server's admission limits (running + waiting) with room for model listings and for requests
        # the server itself turns away with 429; past it Envoy answers 429 too.
        "circuit_breakers": {"thresholds": [{"max_requests": limit, "max_pending_requests": limit}]},
        "typed_extension_protocol_options": _HTTP2_UPSTREAM,
        "load_assignment": _endpoints(SINGLE_CLUSTER, [(settings.grpc_host, settings.grpc_port)]),
    }
    if settings.local_endpoints:
        # Each stream to the frontend with the fewest in flight: Envoy holds one HTTP/2 connection per worker and
        # endpoint, so spreading connections (as the kernel does for callers of the shared port) would not spread
        # streams. The sockets are local and plaintext whatever the public port speaks.
        cluster.update(
            lb_policy="LEAST_REQUEST",
            transport_socket=None,
            load_assignment=_pipe_endpoints(SINGLE_CLUSTER, settings.local_endpoints),
        )
    return cluster


def _model_cluster(name: str, model: ModelRoute, tls: dict[str, Any] | None) -> dict[str, Any]:
    limit = model.max_requests
    return {
        "name": name,
        # STRICT_DNS: a name (a headless Service) stands for all its addresses, re-resolved (every 5 s) as pods
        # come and go.
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        **_balancing(model.balance),
        "transport_socket": tls,
        "circuit_breakers": {
            "thresholds": [{"max_requests": limit, "max_pending_requests": limit, "max_retries": limit}]
        },
        # A replica whose gRPC health is NOT_SERVING (loading, draining) gets no new requests; no panic routing to
        # unhealthy replicas when most are down: their answer would be UNAVAILABLE anyway.
        "health_checks": [
            {
                "timeout": "2s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            "interval": "5s",
            "base_ejection_time": "15s",
            "max_ejection_percent": 50,
        },
        "typed_extension_protocol_options": _HTTP2_UPSTREAM,
        "load_assignment": _endpoints(name, [(b.host, b.port) for b in model.backends]),
    }


# Envoy's client_side_weighted_round_robin on the replicas' own ORCA reports, read out-of-band (a stream per
# replica, a report a second: a generation's in-band report comes only at its end, which for a long stream is
# late) and in-band from every answer's trailers. Weights are recomputed twice a second and a replica's first
# reports count after a second (Envoy's defaults, 1 s and 10 s, are for services whose load changes slowly);
# a replica that stops reporting for 30 s goes back to the mean weight.
_WEIGHTED_BY_LOAD = {
    "policies": [
        {
            "typed_extension_config": {
                "name": "envoy.load_balancing_policies.client_side_weighted_round_robin",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies."
                    "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
                    "enable_oob_load_report": True,
                    "oob_reporting_period": "1s",
                    "blackout_period": "1s",
                    "weight_update_period": "0.5s",
                    "weight_expiration_period": "30s",
                },
            }
        }
    ]
}


# Maglev rather than a ring: the same stability as replicas come and go (a replica's keys move, no others), with a
# lookup table instead of a ring search. A replica that is unhealthy, ejected or drained leaves the table, and its
# keys go to the others; a retry (RETRY_ON: a replica full or going) skips the replicas already tried.
_BY_AFFINITY = {
    "policies": [
        {
            "typed_extension_config": {
                "name": "envoy.load_balancing_policies.maglev",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
                    "consistent_hashing_lb_config": {"hash_balance_factor": AFFINITY_LOAD_BOUND},
                },
            }
        }
    ]
}


def _balancing(balance: str) -> dict[str, Any]:
    """A model cluster's load balancing (backends.BALANCES)."""
    if balance == "load_reports":
        return {"load_balancing_policy": _WEIGHTED_BY_LOAD}
    if balance == "affinity":
        return {"load_balancing_policy": _BY_AFFINITY}
    # Long streams of very different lengths: the replica with the fewest requests in flight, not turns.
    return {"lb_policy": "LEAST_REQUEST"}
