"""Prometheus metrics on their own port (prometheus-client).

chatgen's own families are engine-agnostic (they read the same on the vLLM and hf engines): requests by RPC and
gRPC status, time to first token, inter-token and end-to-end latency histograms, prompt and generation token
counters, the engine's running requests, admission's admitted and waiting choices, aborts and rejections. On the
vLLM engine the same endpoint also serves vLLM's own `vllm:*` families (KV-cache usage, scheduler queues, prefix
cache hits, ...), which vLLM's stat logger keeps in prometheus-client's default registry, plus the process and
Python runtime collectors registered there.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from chatgen.api_keys import allowed
from chatgen.chat.admission import Admission
from chatgen.engine import Engine

# vLLM's buckets for the same three measures (vllm/v1/metrics/loggers.py), so dashboards built for vLLM's
# histograms read chatgen's alike.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class _Forward(Collector):
    """Another registry's families, collected when this one is scraped (no describe(): names are not checked
    against this registry's, and vLLM registers its families only once the engine has started)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        running = Gauge(
            "chatgen_engine_running_requests",
            "Requests the engine holds (queued or generating); 0 when idle",
            registry=self.registry,
        )
        running.set_function(engine.num_running)
        self.started = Counter(
            "chatgen_engine_requests", "Engine requests submitted (one per choice)", registry=self.registry
        )
        self.aborted = Counter(
            "chatgen_requests_aborted",
            "Engine requests stopped before they finished (caller cancelled, disconnected or timed out)",
            registry=self.registry,
        )
        self.rejected = Counter(
            "chatgen_requests_rejected",
            "Requests turned away because the admission queue was full (RESOURCE_EXHAUSTED / HTTP 429)",
            registry=self.registry,
        )
        self.requests = Counter(
            "chatgen_requests",
            "Chat and completion calls finished, by RPC and gRPC status code (CANCELLED: the caller went away)",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "chatgen_time_to_first_token_seconds",
            "From the call's arrival to its first generated token (admission wait and prefill included)",
            ["rpc"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "chatgen_inter_token_latency_seconds",
            "Time between two successive outputs of one engine request (one per decode step)",
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "chatgen_e2e_request_latency_seconds",
            "From the call's arrival to its end, whatever the status",
            ["rpc"],
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "chatgen_prompt_tokens", "Prompt tokens of the calls finished", registry=self.registry
        )
        self.generation_tokens = Counter(
            "chatgen_generation_tokens",
            "Tokens generated for the calls finished (all choices; cancelled calls count what they got)",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "chatgen_auth_failures",
            "Calls refused for their API key, by reason (missing, malformed: not a bearer token, wrong)",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_Forward(REGISTRY))

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    # The chat layer's EngineObserver (chatgen.chat.job).
    def engine_request_started(self) -> None:
        self.started.inc()

    def engine_request_aborted(self) -> None:
        self.aborted.inc()

    def output_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def call_finished(
        self,
        rpc: str,
        code: grpc.StatusCode,
        seconds: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.requests.labels(rpc, code.name).inc()
        self.e2e.labels(rpc).observe(seconds)
        if ttft is not None:
            self.ttft.labels(rpc).observe(ttft)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)

    def watch(self, admission: Admission) -> None:
        Gauge(
            "chatgen_admitted_slots", "Choices admitted to the engine (running)", registry=self.registry
        ).set_function(lambda: admission.running)
        Gauge("chatgen_waiting_slots", "Choices waiting for admission", registry=self.registry).set_function(
            lambda: admission.waiting
        )

    def serve(self, host: str, port: int, keys: Iterable[str] = ()) -> int:
        """/metrics on `host`:`port` (0: a free one); with API keys, only for a scrape that sends one
        (`Authorization: Bearer`, Prometheus's `authorization` scrape setting), as the API itself. Returns the
        port."""
        return serve_registry(self.registry, host, port, keys)


def serve_registry(registry: CollectorRegistry, host: str, port: int, keys: Iterable[str] = ()) -> int:
    """`registry` at /metrics on `host`:`port`, guarded by `keys` where there are any (Metrics.serve)."""
    keys = list(keys)
    if not keys:
        plain, _ = start_http_server(port, addr=host, registry=registry)
        return int(plain.server_port)

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    app = _require_key(make_wsgi_app(registry), keys)
    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="chatgen-metrics", daemon=True).start()
    return int(httpd.server_port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (prometheus-client's own server does not log them either)."""


def _require_key(app: Callable[..., Any], keys: list[str]) -> Callable[..., Any]:
    encoded = [key.encode() for key in keys]

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.lower().startswith("bearer ") and allowed(encoded, header[len("bearer ") :].strip()):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"Missing or invalid API key: send 'Authorization: Bearer <key>'\n"]

    return guarded
