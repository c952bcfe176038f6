"""Prometheus metrics on their own port (prometheus-client): what proves that aborts free the engine and that
admission control holds (the engine's running requests, requests started, aborted, waiting and turned away)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from chatgen.chat.admission import Admission
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

    def watch(self, admission: Admission) -> None:
        Gauge(
            "chatgen_admitted_slots", "Choices admitted to the engine (running)", registry=self.registry
        ).set_function(lambda: admission.running)
        Gauge("chatgen_waiting_slots", "Choices waiting for admission", registry=self.registry).set_function(
            lambda: admission.waiting
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
