"""chatgen.frontends: how many frontends, each one's share of the limits, the shared port."""

from __future__ import annotations

import socket

import pytest

from chatgen.chat.admission import AdmissionLimits
from chatgen.frontends import auto_frontends, frontend_count, reserve_port, share


@pytest.mark.parametrize(("cpus", "count"), [(1, 1), (2, 1), (7.5, 1), (8, 1), (16, 2), (32, 4), (128, 4)])
def test_auto_is_one_frontend_per_eight_cpus_one_to_four(cpus: float, count: int) -> None:
    assert auto_frontends(cpus) == count


def test_frontend_count_takes_a_number_or_auto() -> None:
    assert frontend_count("3") == 3
    assert frontend_count("auto") >= 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError):
            frontend_count(bad)


def test_each_frontend_admits_its_share_rounded_up() -> None:
    assert share(AdmissionLimits(32, 224), 2) == AdmissionLimits(16, 112)
    assert share(AdmissionLimits(5, 0), 2) == AdmissionLimits(3, 0)
    assert share(AdmissionLimits(1, 1), 4) == AdmissionLimits(1, 1)


def test_the_reserved_port_is_bindable_by_each_frontend_and_takes_no_connections() -> None:
    holder = reserve_port("127.0.0.1", 0)
    port = holder.getsockname()[1]
    assert port > 0
    listeners = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
            listeners.append(s)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        for s in listeners:
            s.close()
        holder.close()
    with pytest.raises(OSError):  # the holder never listened: with the frontends gone nothing answers
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
