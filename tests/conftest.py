"""Shared fixtures: the real `chatgen serve` (vLLM engine on the embedded model + the real Envoy) on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.local_server import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2-135m-instruct"
# The integration suite runs once per engine: vLLM (the default engine) and the transformers fallback.
# CHATGEN_TEST_ENGINES=vllm narrows it.
TEST_ENGINES = os.environ.get("CHATGEN_TEST_ENGINES", "vllm,hf").split(",")


@dataclass
class Service:
    grpc_address: str
    http_base: str
    admin_port: int
    engine: str
    process: subprocess.Popen[str]
    log: list[str]
    metrics_port: int
    # Its CHATGEN_RUN_DIR: Envoy's config, and with --frontends each frontend's socket (frontend-<i>.sock).
    run_dir: Path

    def metric(self, name: str) -> float:
        """The current value of one unlabelled Prometheus metric from the server's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def openai(self, timeout: float = 180) -> openai.OpenAI:
        """The real openai SDK pointed at this server's REST API (no retries: every failure must show)."""
        return openai.OpenAI(api_key="unused", base_url=f"{self.http_base}/v1", max_retries=0, timeout=timeout)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from chatgen.embedded_model import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@contextlib.contextmanager
def running_service(
    engine: str, *extra: str, python: str = sys.executable, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """`chatgen serve` as a user runs it (with `python`, from `cwd`, in `env`), on free ports; stopped with SIGTERM
    afterwards."""
    grpc_port, http_port, admin_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    cmd = [
        python, "-m", "chatgen", "serve",
        "--engine", engine,
        "--metrics-port", str(metrics_port),
        "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port),
        "--http-port", str(http_port),
        "--envoy-admin-port", str(admin_port),
        "--shutdown-grace", "2",
        *extra,
    ]  # fmt: skip
    run_dir = Path(f"/tmp/chatgen-test-{os.getpid()}-{grpc_port}")
    env = {**(os.environ if env is None else env), "CHATGEN_RUN_DIR": str(run_dir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if "[chatgen] ready:" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 300
    while not ready.wait(1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("chatgen serve did not start:\n" + "".join(log[-60:]))
    try:
        yield Service(
            f"127.0.0.1:{grpc_port}",
            f"http://127.0.0.1:{http_port}",
            admin_port,
            engine,
            proc,
            log,
            metrics_port,
            run_dir,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session", params=TEST_ENGINES)
def service(request: pytest.FixtureRequest, model_dir: Path) -> Iterator[Service]:
    """The embedded SmolLM2 served by each engine in turn."""
    with running_service(request.param) as svc:
        yield svc


@pytest.fixture(scope="session")
def thinking_model_dir(model_dir: Path) -> Path:
    from tests.support.models import thinking_model

    return thinking_model(model_dir)


@pytest.fixture(scope="session", params=TEST_ENGINES)
def thinking_service(request: pytest.FixtureRequest, thinking_model_dir: Path) -> Iterator[Service]:
    """A Qwen3-style thinking model served with vLLM's qwen3 reasoning parser."""
    from tests.support.models import THINKING_MODEL_NAME

    yield from _serve_model(request.param, thinking_model_dir, THINKING_MODEL_NAME, "--reasoning-parser", "qwen3")


def _serve_model(engine: str, model: Path, name: str, *flags: str) -> Iterator[Service]:
    with running_service(engine, "--model", str(model), "--served-model-name", name, *flags) as svc:
        yield svc


@pytest.fixture(scope="session")
def tools_model_dir(model_dir: Path) -> Path:
    from tests.support.models import tools_model

    return tools_model(model_dir)


@pytest.fixture(scope="session", params=TEST_ENGINES)
def tools_service(request: pytest.FixtureRequest, tools_model_dir: Path) -> Iterator[Service]:
    """A Hermes-format tool-calling model served with vLLM's hermes tool-call parser."""
    from tests.support.models import TOOLS_MODEL_NAME

    yield from _serve_model(request.param, tools_model_dir, TOOLS_MODEL_NAME, "--tool-call-parser", "hermes")


def _whole_run(config: pytest.Config) -> bool:
    """Whether this run is the whole suite (scripts/test.sh's), not a selection of it."""
    if config.option.keyword or config.option.markexpr or getattr(config.option, "lf", False):
        return False
    chosen = {Path(arg).resolve() for arg in config.args}
    return chosen <= {REPO / "tests", REPO / "tests" / "integration"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a whole, otherwise green run: every row of the error table was answered as the table says."""
    from tests.support.error_rows import unobserved

    if exitstatus != 0 or not _whole_run(session.config) or session.testscollected == 0:
        return
    missing = unobserved()
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"error table rows no test saw answered: {sorted(missing)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
