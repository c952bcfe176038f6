"""Ports for the servers tests and benchmarks start: free, and outside the range the kernel gives outgoing
connections, so that nothing but another listener can take one before its server binds it."""

from __future__ import annotations

import socket

import pytest

from benchmarks import local_server
from benchmarks.local_server import _ephemeral_ports, free_port


def test_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low, high = _ephemeral_ports()
    assert 1024 < low < high
    ports = [free_port() for _ in range(20)]
    assert all(1024 <= p < low for p in ports), ports
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port known to be free, and a record of handed-out ports without it: a fixed fallback such as 10007 could
    # be held by a listener or handed out earlier in this process (a CI run failed so).
    spare = free_port()
    monkeypatch.setattr(local_server, "_handed_out", set())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]

        class Picks:
            def __init__(self) -> None:
                self.calls = 0

            def randrange(self, start: int, stop: int) -> int:
                self.calls += 1
                return busy if self.calls == 1 else spare

        monkeypatch.setattr(local_server.random, "SystemRandom", Picks)
        monkeypatch.setattr(local_server, "_ephemeral_ports", lambda: (busy + 100, busy + 200))
        assert free_port() == spare


def test_a_port_is_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's ports are picked together and bound later: the second pick cannot see the first by binding."""
    a, b = free_port(), free_port()
    picks = iter([a, a, a, b])

    class Picks:
        def randrange(self, start: int, stop: int) -> int:
            return next(picks)

    monkeypatch.setattr(local_server.random, "SystemRandom", Picks)
    monkeypatch.setattr(local_server, "_handed_out", set())
    assert [free_port(), free_port()] == [a, b]
