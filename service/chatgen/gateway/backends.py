"""The shared gateway's routing config: which chatgen gRPC servers serve which model.

`chatgen gateway --backends FILE` reads a YAML (or JSON) file like

    models:
    - name: smollm2-135m-instruct             # the `model` callers send, as the servers serve it
      backends: [chatgen-smollm2-grpc:50051]  # host:port; a DNS name stands for all its addresses
    - name: qwen3-8b
      backends: [10.0.0.5:50051, 10.0.0.6:50051]
      max_requests: 512                       # optional: the cluster's circuit breaker (default 1024 per backend)
      balance: load_reports                   # optional: least_request (the default), load_reports or affinity

and renders one Envoy cluster per model (replicas health-checked over gRPC health, outliers ejected), a route per
model chosen by the request body's `model`, the union of the models for `GET /v1/models`, and a 404 for any other
model. `balance` picks how a model's replicas share its requests: `least_request`, the replica with the fewest in
flight; `load_reports`, Envoy's client_side_weighted_round_robin on the load each replica reports (ORCA, see
transport.load_report): each replica weighted by the requests it answers per second over its utilization;
`affinity`, the requests of one conversation to one replica, whose prefix cache holds its earlier turns: Envoy's
Maglev consistent hash on the conversation's key (the gateway's Lua filter finds it: an `x-session-id` header,
`prompt_cache_key`, `user`, the Messages API's `metadata.user_id`, or the conversation a Responses API
`previous_response_id` continues), bounded in load (no replica gets more than AFFINITY_LOAD_BOUND times the mean
of requests in flight: past it the key's requests go on to the next replica); a request with no key goes to a
random replica within the same bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# Names go into Envoy header matchers, Lua tables and JSON unescaped: keep them to what model names use.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")
DEFAULT_MAX_REQUESTS_PER_BACKEND = 1024
BALANCES = ("least_request", "load_reports", "affinity")


class BackendsError(ValueError):
    pass


@dataclass(frozen=True)
class Backend:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, where: str) -> Backend:
        host, sep, port = str(text).rpartition(":")
        if not sep or not HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise BackendsError(f"{where}: {text!r} is not host:port")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class ModelRoute:
    name: str
    backends: tuple[Backend, ...]
    max_requests: int
    # How its replicas share its requests: one of BALANCES.
    balance: str = "least_request"


def parse_backends(doc: object, source: str = "backends") -> tuple[ModelRoute, ...]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise BackendsError(f"{source}: wants a 'models' list, each with a name and backends")
    unknown = set(doc) - {"models"}
    if unknown:
        raise BackendsError(f"{source}: unknown keys {sorted(unknown)}")
    routes: list[ModelRoute] = []
    for i, entry in enumerate(doc["models"]):
        where = f"{source}: models[{i}]"
        if not isinstance(entry, dict):
            raise BackendsError(f"{where} must be a mapping")
        unknown = set(entry) - {"name", "backends", "max_requests", "balance"}
        if unknown:
            raise BackendsError(f"{where}: unknown keys {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise BackendsError(f"{where}.name must be a model name ({MODEL_NAME.pattern}), got {name!r}")
        listed = entry.get("backends")
        if not isinstance(listed, list) or not listed:
            raise BackendsError(f"{where}.backends must list at least one host:port")
        backends = tuple(Backend.parse(b, f"{where}.backends[{j}]") for j, b in enumerate(listed))
        if len(set(backends)) != len(backends):
            raise BackendsError(f"{where}.backends lists a backend twice")
        max_requests = entry.get("max_requests", DEFAULT_MAX_REQUESTS_PER_BACKEND * len(backends))
        if not isinstance(max_requests, int) or isinstance(max_requests, bool) or max_requests < 1:
            raise BackendsError(f"{where}.max_requests must be a positive integer")
        balance = entry.get("balance", "least_request")
        if balance not in BALANCES:
            raise BackendsError(f"{where}.balance must be one of {', '.join(BALANCES)}, got {balance!r}")
        routes.append(ModelRoute(name, backends, max_requests, balance))
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise BackendsError(f"{source}: a model is listed twice")
    return tuple(routes)


def load_backends(path: Path) -> tuple[ModelRoute, ...]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BackendsError(f"cannot read {path}: {exc}") from None
    return parse_backends(doc, str(path))
