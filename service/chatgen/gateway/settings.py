"""What a gateway is configured with, and how many Envoy workers a machine gets."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatgen.gateway.backends import ModelRoute
from chatgen.tls import TlsFiles


@dataclass(frozen=True)
class GatewaySettings:
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    admin_port: int
    work_dir: Path
    max_body_bytes: int = 8 * 1024 * 1024
    max_connections: int = 4096
    # Concurrent requests Envoy forwards to the gRPC server (its circuit breaker).
    max_upstream_requests: int = 1024
    # Envoy's worker threads; the CLI's default (`auto`) is auto_envoy_workers(usable_cpus()).
    concurrency: int = 1
    log_level: str = "warning"
    # TLS on the REST listener, and to the gRPC server (when its port is TLS).
    tls: TlsFiles | None = None
    upstream_tls: bool = False
    # A listener on http_host serving only GET /stats/prometheus from the admin port (0: none), so that
    # Prometheus can scrape Envoy while the admin interface itself stays on 127.0.0.1.
    stats_port: int = 0
    # The shared gateway (`chatgen gateway --backends`): model -> replicas. Empty: the one server at
    # grpc_host:grpc_port, which answers for its own model.
    models: tuple[ModelRoute, ...] = ()
    # Several frontends of one server (`chatgen serve --frontends N`): the unix socket each listens on, plaintext,
    # in place of grpc_host:grpc_port. Empty: the one server there.
    local_endpoints: tuple[str, ...] = ()
    # When the config was rendered: the `created` of the models GET /v1/models lists (--backends).
    rendered_at: int = 0


# One Envoy worker streams thousands of tokens a second (≈ 120 µs of CPU per token on the 2-core machine the
# benchmarks ran on). Extra workers split the same events between threads, each waking for fewer of them, and
# where the server and the engine share a few cores that costs them CPU: with the token simulator on 2 cores, one
# worker instead of two cut Envoy's CPU per token from 141 to 116 µs and raised REST throughput 14 %
# (benchmarks.envoy_workers).
CPUS_PER_ENVOY_WORKER = 4
MAX_AUTO_ENVOY_WORKERS = 4
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> float:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's CPU
    limit, which affinity does not show)."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def auto_envoy_workers(cpus: float) -> int:
    """Envoy's worker threads for a machine (or container) with `cpus` CPUs: one per four, one to four."""
    return max(1, min(MAX_AUTO_ENVOY_WORKERS, int(cpus // CPUS_PER_ENVOY_WORKER)))


def count_or_auto(text: str, auto: Callable[[float], int]) -> int:
    """A count flag's value: a number (1 or more), or `auto`: `auto` of usable_cpus()."""
    if text.strip().lower() == "auto":
        return auto(usable_cpus())
    count = int(text)
    if count < 1:
        raise ValueError(text)
    return count


def envoy_workers(text: str) -> int:
    """--envoy-concurrency: a number of worker threads, or `auto` (auto_envoy_workers of usable_cpus)."""
    return count_or_auto(text, auto_envoy_workers)


def default_work_dir() -> Path:
    return Path(os.environ.get("CHATGEN_RUN_DIR") or f"/tmp/chatgen-{os.getpid()}")
