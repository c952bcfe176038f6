"""Prometheus metrics on their own port (prometheus-client). For now what proves that aborts free the engine:
the engine's running requests and the requests stopped before they finished."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from chatgen.engine import Engine


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        running = Gauge(
            "chatgen_engine_running_requests",
            "Requests the engine holds (queued or generating); 0 when idle",
            registry=self.registry,
        )
        running.set_function(engine.num_running)
        self.aborted = Counter(
            "chatgen_requests_aborted",
            "Engine requests stopped before they finished (caller cancelled, disconnected or timed out)",
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
