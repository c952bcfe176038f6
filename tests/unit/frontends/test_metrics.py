"""The supervisor's /metrics: every frontend's families, merged, each sample labelled with its frontend."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from chatgen.frontends.metrics import FrontendMetrics


def frontend_registry(requests: int, running: int) -> int:
    """A frontend's registry served on a free loopback port, as chatgen.metrics serves it; returns the port."""
    registry = CollectorRegistry()
    Counter("chatgen_requests", "calls", ["rpc"], registry=registry).labels("chat").inc(requests)
    Gauge("chatgen_engine_running_requests", "running", registry=registry).set(running)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return int(server.server_port)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_frontends_samples_carry_its_index_and_keep_their_type() -> None:
    ports = [frontend_registry(3, 1), frontend_registry(5, 2)]
    registry = CollectorRegistry()
    registry.register(FrontendMetrics(lambda: ports))
    text = generate_latest(registry).decode()
    got = samples(text)
    assert got[("chatgen_requests_total", (("frontend", "0"), ("rpc", "chat")))] == 3
    assert got[("chatgen_requests_total", (("frontend", "1"), ("rpc", "chat")))] == 5
    assert got[("chatgen_engine_running_requests", (("frontend", "0"),))] == 1
    assert got[("chatgen_engine_running_requests", (("frontend", "1"),))] == 2
    # One family per name, with its type, whatever the number of frontends.
    assert text.count("# TYPE chatgen_requests_total counter") == 1
    assert text.count("# TYPE chatgen_engine_running_requests gauge") == 1


def test_a_frontend_not_serving_yet_or_gone_is_left_out() -> None:
    live = frontend_registry(7, 0)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once this block ends
    registry = CollectorRegistry()
    registry.register(FrontendMetrics(lambda: [0, closed, live], timeout=1))
    got = samples(generate_latest(registry).decode())
    assert {labels for (name, labels) in got if name == "chatgen_requests_total"} == {
        (("frontend", "2"), ("rpc", "chat"))
    }
