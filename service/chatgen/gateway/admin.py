"""Envoy's admin interface: draining a running gateway before it stops."""

from __future__ import annotations

import sys
import time


def drain_gateway(admin_port: int, timeout: float, settle: float, poll: float = 0.2) -> int:
    """Drain a running gateway (`chatgen gateway-drain`, a preStop hook): fail its /healthz (readiness), drain its
    listeners (HTTP/1.1 responses say Connection: close, HTTP/2 connections get GOAWAY), then wait until no REST
    call is in flight, at least `settle` seconds and at most `timeout`. Envoy itself drains nothing on SIGTERM.
    Returns 0 once idle, 1 if calls were still in flight at the timeout."""
    import urllib.request

    admin = f"http://127.0.0.1:{admin_port}"

    def admin_call(path: str, method: str = "POST") -> str:
        with urllib.request.urlopen(urllib.request.Request(admin + path, method=method), timeout=5) as reply:
            return str(reply.read().decode())

    def in_flight() -> int:
        text = admin_call("/stats?filter=^http%5C.rest%5C.downstream_rq_active$", "GET")
        values = [int(line.rsplit(":", 1)[1]) for line in text.splitlines() if line.strip()]
        return sum(values)

    started = time.monotonic()
    admin_call("/healthcheck/fail")
    admin_call("/drain_listeners?graceful")
    while True:
        active = in_flight()
        waited = time.monotonic() - started
        if active == 0 and waited >= settle:
            print(f"[chatgen] gateway drained in {waited:.1f} s", file=sys.stderr, flush=True)
            return 0
        if waited >= timeout:
            print(f"[chatgen] gateway drain: {active} calls still in flight after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(poll)
