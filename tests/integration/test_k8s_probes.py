"""The Kubernetes manifests against the real thing: their probes and scrape settings asked of a running
`chatgen serve`, and the gateway sidecar's command run for real in front of a separate gRPC server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import MODEL_NAME, Service, free_port
from tests.support.k8s import render


async def test_the_manifests_probes_pass_on_a_running_server(service: Service) -> None:
    rendered = render("cpu")
    server = rendered.container("server")
    async with grpc.aio.insecure_channel(service.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # The kubelet's gRPC probe sends the probe's `service`, "" when it has none.
            request = health_pb2.HealthCheckRequest(service=server[probe]["grpc"].get("service", ""))
            reply = await stub.Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, probe
        # A name the server does not know is NOT_FOUND, so a typo in a probe could not pass.
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service="livenes"), timeout=5)
            raise AssertionError("an unknown health service answered")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND
    gateway = rendered.container("gateway")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        reply = httpx.get(service.http_base + gateway[probe]["httpGet"]["path"], timeout=5)
        assert reply.status_code == 200, probe
    # Prometheus scrapes where the annotations say, and the HPA's queue metric is among what it finds.
    annotations = rendered.pod["metadata"]["annotations"]
    scraped = httpx.get(f"http://127.0.0.1:{service.metrics_port}{annotations['prometheus.io/path']}", timeout=5)
    assert scraped.status_code == 200
    hpa_metric = next(m for m in rendered.one("HorizontalPodAutoscaler")["spec"]["metrics"] if m["type"] == "Pods")
    name = hpa_metric["pods"]["metric"]["name"]
    assert any(line.startswith(name + " ") for line in scraped.text.splitlines()), name


def test_the_gateway_sidecar_serves_rest_in_front_of_a_separate_server(service: Service, tmp_path: Path) -> None:
    """The sidecar's command line and settings from the manifest, with this machine's ports: `chatgen gateway`
    becomes Envoy itself (signals reach it directly) and serves the OpenAI API from the server on grpc_port."""
    rendered = render("cpu")
    http_port, admin_port, stats_port = free_port(), free_port(), free_port()
    assert rendered.environment("gateway")["CHATGEN_ENVOY_STATS_PORT"] == "9401"  # the manifest's, moved here
    env = {
        **os.environ,
        **rendered.environment("gateway"),
        "CHATGEN_HOST": "127.0.0.1",
        "CHATGEN_HTTP_PORT": str(http_port),
        "CHATGEN_ENVOY_ADMIN_PORT": str(admin_port),
        "CHATGEN_GRPC_PORT": service.grpc_address.rsplit(":", 1)[1],
        "CHATGEN_ENVOY_STATS_PORT": str(stats_port),
    }
    command = rendered.command("gateway")
    command[command.index("--work-dir") + 1] = str(tmp_path)
    assert command[0] == "chatgen"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chatgen")), *command[1:]], env=env)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"chatgen gateway exited with {proc.returncode}"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not answer /healthz"
            time.sleep(0.2)
        assert psutil.Process(proc.pid).name() == "envoy"  # exec'd: no Python process in between
        assert (tmp_path / "envoy.json").is_file()

        import openai

        client = openai.OpenAI(api_key="unused", base_url=f"{base}/v1", max_retries=0, timeout=180)
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        assert reply.model == MODEL_NAME and reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
        chunks = list(
            client.chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        # Envoy's stats, where the manifest's envoy-metrics port has Prometheus look: the two calls above counted.
        stats = f"http://127.0.0.1:{stats_port}"
        scraped = httpx.get(f"{stats}/stats/prometheus", timeout=5)
        assert scraped.status_code == 200
        completed = [
            float(line.split()[-1])
            for line in scraped.text.splitlines()
            if line.startswith("envoy_cluster_upstream_rq_completed{") and 'envoy_cluster_name="chatgen_grpc"' in line
        ]
        assert completed == [2.0], completed
        # Nothing else of the admin interface is reachable from outside the pod.
        for method, path in (("GET", "/stats"), ("GET", "/config_dump"), ("POST", "/quitquitquit")):
            assert httpx.request(method, f"{stats}{path}", timeout=5).status_code == 404, path
        assert httpx.post(f"{stats}/stats/prometheus", timeout=5).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0
