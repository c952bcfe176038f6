"""A running server's lifecycle: ready, then serving until SIGTERM/SIGINT (drain, exit 0) or until Envoy or the
engine dies (drain briefly, exit 1, so that a supervisor restarts the service)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from chatgen.chat.admission import Admission
from chatgen.engine import Engine, EngineError
from chatgen.gateway import EnvoyProcess
from chatgen.server import Service, Serving
from chatgen.settings import ServeSettings

log = logging.getLogger("chatgen")


def note(text: str) -> None:
    """A line of the server's own progress on stderr (start-up, drain, shutdown)."""
    print(f"[chatgen] {text}", file=sys.stderr, flush=True)


# After the drain: how long requests still running get to send their error before the server stops.
REVOKE_SECONDS = 2.0
# The final stop: a call that reached the server just before it (already refused by the drain, or revoked) gets this
# long to send its UNAVAILABLE; grpc would otherwise cancel it, and its caller would see CANCELLED with no reason.
STOP_SECONDS = 1.0


async def watch_engine(engine: Engine, serving: Serving, interval: float = 1.0) -> str:
    """Return (with the reason) once the engine can no longer serve: a call found it dead, or its health check
    failed."""
    while True:
        try:
            await asyncio.wait_for(serving.engine_failed.wait(), interval)
            return serving.engine_failure
        except TimeoutError:
            pass
        try:
            await engine.check_health()
        except EngineError as exc:
            return str(exc)


def ready_line(settings: ServeSettings, model: str, engine: str, port: int, frontends: int = 1) -> str:
    """What listens where, as bound (0.0.0.0 is every interface, as the bind is), and what each one demands."""
    host, tls = settings.host, settings.tls is not None
    if host in ("0.0.0.0", "::", ""):
        scope = "all interfaces"
    elif host.startswith("127.") or host in ("::1", "localhost"):
        scope = "loopback only"
    else:
        scope = f"{host} only"
    parts = [f"gRPC{' (TLS)' if tls else ''} on {host}:{port}"]
    if settings.gateway is not None:
        parts.append(f"REST on {'https' if tls else 'http'}://{host}:{settings.gateway.http_port}/v1")
    if settings.metrics_port:
        parts.append(f"metrics on http://{host}:{settings.metrics_port}/metrics")
    keys = "API key required (metrics too; health and reflection open)" if settings.api_keys else "no API key"
    served = f"model '{model}' ({engine}{f', {frontends} frontends' if frontends > 1 else ''})"
    return f"[chatgen] ready: {served}, {', '.join(parts)} ({scope}; {keys})"


async def run_until_stopped(
    settings: ServeSettings,
    engine: Engine,
    service: Service,
    envoy: EnvoyProcess | None,
    admission: Admission,
    say_ready: bool = True,
) -> int:
    """Serve until SIGTERM/SIGINT (then drain and return 0) or until Envoy or the engine dies (return 1, so the
    supervisor restarts the service)."""
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    if say_ready:
        print(ready_line(settings, engine.model.name, engine.name, service.port), flush=True)
    signalled = asyncio.ensure_future(signals.get())
    engine_died = asyncio.ensure_future(watch_engine(engine, service.serving))
    envoy_exited = asyncio.ensure_future(envoy.wait_exit() if envoy is not None else asyncio.Event().wait())
    waits = [signalled, engine_died, envoy_exited]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()

    grace = settings.shutdown_grace
    if engine_died.done() and not engine_died.cancelled():
        reason = f"The engine failed and this server is restarting: {engine_died.result()}"
        log.error("%s", reason)
        code, grace = 1, min(grace, 5.0)
    elif envoy_exited.done() and not envoy_exited.cancelled():
        log.error("Envoy exited unexpectedly; shutting down so the supervisor restarts the service")
        reason, code, grace = "The server is restarting", 1, min(grace, 5.0)
    else:
        reason, code = "The server is shutting down; retry on another replica", 0
    return await drain(service, admission, signals, reason, grace, code)


async def drain(
    service: Service, admission: Admission, signals: asyncio.Queue[int], reason: str, grace: float, code: int
) -> int:
    """Probes see NOT_SERVING, new requests get UNAVAILABLE / 503, admitted ones may finish within `grace`
    (a second signal ends the wait). Those still running then end with an error of their own."""
    admission.drain(reason)
    await service.serving.set(False)
    note(f"draining: {admission.running} running, {admission.waiting} waiting (up to {grace:g} s)")
    second = asyncio.ensure_future(signals.get())
    idle = asyncio.ensure_future(admission.idle())
    done, _ = await asyncio.wait([second, idle], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    if idle not in done:
        log.warning("stopping with %d requests still running", admission.running + admission.waiting)
        # Each gets UNAVAILABLE (a REST stream its error event and [DONE]) before the server stops, which would
        # cut them with no word of why.
        await service.api.revoke(reason)
        await asyncio.wait([idle], timeout=REVOKE_SECONDS)
    idle.cancel()
    return code
