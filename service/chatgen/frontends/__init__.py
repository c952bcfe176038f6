"""`chatgen serve --frontends N`: N gRPC server processes over one engine, so that the serving layer's Python is
not held to one event loop (the known ceiling of servers that embed vLLM's AsyncLLM, and what `vllm serve
--api-server-count` is for).

This process (the supervisor) starts the engine core and the frontends (group.py), waits until each serves, then
runs Envoy with the frontends' unix sockets as its local cluster (least-request: streams, not connections, are
spread) and serves every frontend's metrics with a `frontend` label (metrics.py). The frontends share the public
gRPC port (SO_REUSEPORT: the kernel spreads direct callers' connections). SIGTERM drains them all, as one server
drains; when any frontend, the engine core or Envoy dies, the rest are stopped and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import shutil
import signal
import socket
from dataclasses import replace

from chatgen import reaper
from chatgen.chat.admission import AdmissionLimits
from chatgen.engine.factory import vllm_available
from chatgen.frontends.group import Group, start_group
from chatgen.frontends.metrics import FrontendMetrics
from chatgen.frontends.process import FrontendSpec
from chatgen.gateway import EnvoyProcess, default_work_dir
from chatgen.gateway.settings import count_or_auto
from chatgen.lifecycle import REVOKE_SECONDS, STOP_SECONDS, note, ready_line
from chatgen.settings import ServeSettings

log = logging.getLogger("chatgen")

# Engines whose frontends can share one engine (vLLM's core) or need none (the token simulator); the hf engine
# runs the model in the serving process, so N of it are N replicas, not frontends.
ENGINES = ("vllm", "simulator")
# One frontend per this many CPUs, at most MAX_AUTO (--frontends auto): a frontend's event loop takes a core
# under load, the engine core another, Envoy and the tokenizers theirs.
CPUS_PER_FRONTEND = 8
MAX_AUTO = 4


def auto_frontends(cpus: float) -> int:
    return max(1, min(MAX_AUTO, int(cpus // CPUS_PER_FRONTEND)))


def frontend_count(text: str) -> int:
    """--frontends: a number, or `auto` (auto_frontends of usable_cpus)."""
    return count_or_auto(text, auto_frontends)


def share(limits: AdmissionLimits, count: int) -> AdmissionLimits:
    """Each frontend's admission limits: its share of the server's, rounded up."""
    return AdmissionLimits(math.ceil(limits.max_running / count), math.ceil(limits.max_waiting / count))


def frontend_settings(settings: ServeSettings, port: int) -> ServeSettings:
    engine = replace(settings.engine, max_num_seqs=settings.engine.max_num_seqs or settings.limits.max_running)
    return replace(
        settings,
        engine=engine,
        grpc_port=port,
        limits=share(settings.limits, settings.frontends),
        gateway=None,
        metrics_port=0,
    )


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on host:port, which the frontends then bind too: it fixes the
    number when `port` is 0 and keeps another program from taking it before they listen. It takes no
    connections: the kernel spreads those between the sockets that listen."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder


def supervise(settings: ServeSettings, log_level: str = "INFO") -> int:
    if settings.engine.kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        settings = replace(settings, engine=replace(settings.engine, kind=kind))
    if settings.engine.kind not in ENGINES:
        kind = settings.engine.kind
        raise SystemExit(f"chatgen serve: --frontends above 1 needs the vllm or simulator engine, not {kind}")
    reaper.become_subreaper()
    work_dir = settings.gateway.work_dir if settings.gateway is not None else default_work_dir()
    made_work_dir = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    holder = reserve_port(settings.host, settings.grpc_port)
    sockets = tuple(str(work_dir / f"frontend-{i}.sock") for i in range(settings.frontends))
    ready = multiprocessing.get_context("spawn").Queue()
    spec = FrontendSpec(
        frontend_settings(settings, holder.getsockname()[1]), sockets, ready, bool(settings.metrics_port), log_level
    )
    group: Group | None = None
    try:
        note(f"starting {settings.frontends} frontends on the {settings.engine.kind} engine")
        group = start_group(spec, settings.frontends)
        return asyncio.run(Supervisor(settings, spec, group).run())
    finally:
        note("shutting down")
        if group is not None:
            group.stop()
        holder.close()
        if made_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        ended = reaper.end_descendants()
        if ended:
            note(f"ended {len(ended)} processes left behind (pids {', '.join(map(str, ended))})")


class Supervisor:
    def __init__(self, settings: ServeSettings, spec: FrontendSpec, group: Group) -> None:
        self.settings, self.spec, self.group = settings, spec, group
        self.metrics_ports = [0] * settings.frontends
        self.envoy: EnvoyProcess | None = None

    def _dead(self) -> str | None:
        """What has died that the server needs: a frontend, the engine core (None: all alive)."""
        for i, process in enumerate(self.group.frontends):
            if not process.is_alive():
                return f"frontend {i} exited ({process.exitcode})"
        for process in self.group.engine:
            if not process.is_alive():
                return f"the engine core {process.name} exited ({process.exitcode})"
        return None

    async def _wait_ready(self) -> None:
        """Until every frontend has reported that it serves (fails when one dies first)."""
        waiting = set(range(self.settings.frontends))
        while waiting:
            while not self.spec.ready.empty():
                index, port = self.spec.ready.get_nowait()
                self.metrics_ports[index] = port
                waiting.discard(index)
            if (dead := self._dead()) is not None:
                raise SystemExit(f"chatgen serve: {dead} before serving")
            await asyncio.sleep(0.1)

    async def _start_edges(self) -> None:
        """Metrics, then Envoy, once the frontends serve."""
        s = self.settings
        if s.metrics_port:
            from prometheus_client import CollectorRegistry

            from chatgen.metrics import serve_registry

            registry = CollectorRegistry()
            registry.register(FrontendMetrics(lambda: self.metrics_ports))
            serve_registry(registry, s.host, s.metrics_port, s.api_keys)
        if s.gateway is not None:
            port = self.spec.settings.grpc_port
            gateway = replace(s.gateway, grpc_port=port, local_endpoints=self.spec.sockets, upstream_tls=False)
            self.envoy = EnvoyProcess(gateway)
            self.envoy.start()
            await self.envoy.wait_ready()

    async def run(self) -> int:
        await self._wait_ready()
        await self._start_edges()
        s = self.settings
        engine = s.engine.kind
        print(ready_line(s, s.engine.model.served_name, engine, self.spec.settings.grpc_port, s.frontends), flush=True)
        try:
            return await self._serve()
        finally:
            if self.envoy is not None:
                self.envoy.stop()

    async def _serve(self) -> int:
        signals: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        while True:
            if not signals.empty():
                await signals.get()
                note(f"draining {self.settings.frontends} frontends (up to {self.settings.shutdown_grace:g} s)")
                return await self._drain(signals)
            if (dead := self._dead()) is not None or (self.envoy is not None and self.envoy.exited()):
                log.error("%s; stopping the server so that the supervisor restarts it", dead or "Envoy exited")
                await self._stop_frontends(5.0 + REVOKE_SECONDS + STOP_SECONDS)
                return 1
            await asyncio.sleep(0.2)

    async def _drain(self, signals: asyncio.Queue[int]) -> int:
        """Each frontend drains as a lone server does (SIGTERM); a second signal is passed on (it ends their
        wait for running requests). 0 when every frontend exited cleanly."""
        self._signal_frontends()
        await self._frontends_gone(self.settings.shutdown_grace + REVOKE_SECONDS + STOP_SECONDS + 10.0, signals)
        await self._stop_frontends(1.0)
        return 0 if all(p.exitcode == 0 for p in self.group.frontends) else 1

    def _signal_frontends(self) -> None:
        for process in self.group.frontends:
            if process.is_alive():
                process.terminate()

    async def _frontends_gone(self, timeout: float, signals: asyncio.Queue[int] | None = None) -> None:
        """Until every frontend has exited or `timeout` has passed; a signal meanwhile is passed on to them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(p.is_alive() for p in self.group.frontends) and asyncio.get_running_loop().time() < deadline:
            if signals is not None and not signals.empty():
                await signals.get()
                self._signal_frontends()
            await asyncio.sleep(0.1)

    async def _stop_frontends(self, timeout: float) -> None:
        self._signal_frontends()
        await self._frontends_gone(timeout)
        for process in self.group.frontends:
            if process.is_alive():
                process.kill()
