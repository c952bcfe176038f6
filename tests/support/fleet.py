"""A fleet for the shared gateway's tests: token-simulator replicas (`chatgen serve --engine simulator`) behind
a real `chatgen gateway --backends`, and what each replica served by its own metrics."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service, free_port, running_service

# 10 ms to the first token, then 3 ms per token, 12 tokens: ≈ 45 ms per request.
TIMING = "10,3,12"


def replica(name: str, timing: str = TIMING, *flags: str) -> contextlib.AbstractContextManager[Service]:
    return running_service(
        "simulator", "--served-model-name", name, "--simulator-timing", timing, "--no-gateway",
        "--shutdown-grace", "10", *flags,
    )  # fmt: skip


@dataclass
class Gateway:
    base: str
    admin_port: int
    stats_port: int
    process: subprocess.Popen[bytes]

    def stat(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats/prometheus", timeout=5).text
        # The parser names an Envoy counter's samples <name>_total.
        names = (name, f"{name}_total")
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in names)


@contextlib.contextmanager
def gateway(models: dict[str, list[Service]], tmp_path: Path, balance: str = "least_request") -> Iterator[Gateway]:
    lines = ["models:"]
    for name, replicas in models.items():
        lines += [f"- name: {name}", f"  backends: [{', '.join(r.grpc_address for r in replicas)}]"]
        lines += [f"  balance: {balance}"]
    config = tmp_path / "backends.yaml"
    config.write_text("\n".join(lines) + "\n")
    http_port, admin_port, stats_port = free_port(), free_port(), free_port()
    chatgen = Path(sys.executable).with_name("chatgen")
    command = [
        str(chatgen), "gateway", "--backends", str(config), "--host", "127.0.0.1", "--http-port", str(http_port),
        "--envoy-admin-port", str(admin_port), "--envoy-stats-port", str(stats_port), "--work-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(command)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        # Ready once every model's replicas passed their first gRPC health check.
        while True:
            assert proc.poll() is None, f"chatgen gateway exited with {proc.returncode}"
            with contextlib.suppress(httpx.TransportError):
                if all(httpx.get(f"{base}/v1/models/{m}", timeout=2).status_code == 200 for m in models):
                    break
            assert time.monotonic() < deadline, "the gateway did not route to every model"
            time.sleep(0.2)
        yield Gateway(base, admin_port, stats_port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


CHAT_RPCS = ("CreateChatCompletion", "StreamChatCompletion")


def served(service: Service, *rpcs: str) -> float:
    """Calls of `rpcs` (by default chat's, unary or streamed: REST reaches both) this replica finished with
    status OK (its own /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "chatgen_requests_total"
        and s.labels.get("rpc") in (rpcs or CHAT_RPCS)
        and s.labels.get("code") == "OK"
    )


def client(base: str) -> openai.AsyncOpenAI:
    # No SDK retries: whatever is retried must be the gateway's doing.
    return openai.AsyncOpenAI(api_key="unused", base_url=f"{base}/v1", max_retries=0, timeout=60)
