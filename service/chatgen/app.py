"""`chatgen serve` and `chatgen gateway` wired from typed settings: the engine, the gRPC server, Envoy, and the
process's lifecycle (ready, drain on SIGTERM, exit 1 when Envoy or the engine dies so a supervisor restarts it).
The command line (chatgen.cli) only turns flags into these settings."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from chatgen import reaper
from chatgen.chat.adapters import AdapterModule
from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.chat.coalescing import StreamInterval
from chatgen.chat.grammar import GrammarCheck
from chatgen.chat.parsing import load_parser_class
from chatgen.embedded_model import default_cache_dir
from chatgen.engine import Engine, EngineError
from chatgen.engine.factory import ModelChoice, SimulatorTiming, create_engine
from chatgen.gateway import EnvoyProcess, GatewaySettings, default_work_dir, envoy_command, render_config
from chatgen.metrics import Metrics
from chatgen.probes import grpc_healthy, local, tls_listening
from chatgen.server import GrpcServer
from chatgen.store import ResponseStore, StoreLimits, open_store
from chatgen.tls import TlsFiles

log = logging.getLogger("chatgen")

# After the drain: how long requests still running get to send their error before the server stops.
REVOKE_SECONDS = 2.0
# The final stop: a call that reached the server just before it (already refused by the drain, or revoked) gets this
# long to send its UNAVAILABLE; grpc would otherwise cancel it, and its caller would see CANCELLED with no reason.
STOP_SECONDS = 1.0


@dataclass(frozen=True)
class EngineSettings:
    kind: str
    model: ModelChoice
    max_model_len: int | None
    dtype: str
    simulator: SimulatorTiming
    # vLLM engine flags, as `vllm serve` takes them.
    argv: tuple[str, ...] = ()
    # vLLM's batch limit; None: the admission limit (--max-running). Frontends, each admitting a share of it,
    # keep the whole.
    max_num_seqs: int | None = None


@dataclass(frozen=True)
class ServeSettings:
    engine: EngineSettings
    host: str
    grpc_port: int
    limits: AdmissionLimits
    max_request_bytes: int
    # Envoy in front of the server (None: gRPC only); its grpc_port is the server's once it listens.
    gateway: GatewaySettings | None
    metrics_port: int = 0
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    api_keys: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    shutdown_grace: float = 30.0
    log_requests: bool = True
    # Compile limit per new decoding schema (chat.grammar); 0: none.
    max_grammar_seconds: float = 5.0
    # Longest one stream chunk may wait on a caller that does not read; 0: none.
    write_timeout: float = 30.0
    # The Responses API's store: None (SQLite under the cache directory), a SQLite path, or redis://...
    response_store: str | None = None
    response_store_limits: StoreLimits = field(default_factory=StoreLimits)
    # LoRA adapters loaded at start (--lora-modules), served under their names beside the model.
    lora_modules: tuple[AdapterModule, ...] = ()
    # How streams coalesce tokens into chunks (--stream-interval, --stream-interval-ms).
    stream_interval: StreamInterval = field(default_factory=StreamInterval)
    # gRPC server processes over one engine (--frontends; chatgen.frontends runs them when above 1).
    frontends: int = 1


@dataclass(frozen=True)
class FrontendRole:
    """This process is frontend `index` of `count` (chatgen.frontends): it shares the public gRPC port with the
    others, listens for the local Envoy on its own unix socket, reaches the engine core as `client` (a
    vllm_engine.EngineClient; None: its own engine, e.g. the token simulator), and once it serves puts
    (index, metrics port or 0) on `ready`, a multiprocessing queue. The supervisor prints the ready line, runs
    Envoy and serves the metrics of all."""

    index: int
    count: int
    socket_path: str
    ready: Any
    client: Any = None
    metrics: bool = False


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (vLLM depends on it; `vllm serve` runs on it through uvicorn), else asyncio's
    own loop. Every token of every stream is a few loop callbacks (grpc's completions, the generators that
    relay it), and uvloop runs them in C."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def freeze_startup_heap() -> int:
    """Move every object alive once the server is up (torch, transformers, vLLM, the tokenizer: ≈ 700,000 with
    vLLM) out of the garbage collector's reach, as `vllm serve` does (vllm.utils.gc_utils.freeze_gc_heap).
    Otherwise each full collection walks them all: ≈ 300 ms with the event loop stopped, every stream in flight
    stalled (inter-token p99 of 400-500 ms under load). Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _note(text: str) -> None:
    print(f"[chatgen] {text}", file=sys.stderr, flush=True)


async def _start_engine(settings: EngineSettings, limits: AdmissionLimits, client: Any = None) -> Engine:
    engine = create_engine(
        settings.kind,
        settings.model,
        settings.max_model_len,
        settings.dtype,
        max_num_seqs=settings.max_num_seqs or limits.max_running,
        simulator=settings.simulator,
        engine_argv=settings.argv,
        client=client,
    )
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    _note(f"starting the {engine.name} engine on {settings.model.path} ({loop} event loop)")
    started = time.monotonic()
    await engine.start()
    _note(f"engine ready in {time.monotonic() - started:.0f} s")
    return engine


def grammar_check(settings: ServeSettings) -> GrammarCheck | None:
    """The compile check for decoding schemas, on the engines that decode under them (not the token simulator).
    Its worker starts now, to load beside the engine."""
    if settings.max_grammar_seconds <= 0 or settings.engine.kind == "simulator":
        return None
    check = GrammarCheck(settings.engine.model.path, settings.max_grammar_seconds)
    check.start()
    return check


async def _start_server(
    settings: ServeSettings,
    engine: Engine,
    admission: Admission,
    metrics: Metrics | None,
    grammars: GrammarCheck | None,
    store: ResponseStore,
    role: FrontendRole | None,
) -> GrpcServer:
    parser_cls = load_parser_class(settings.reasoning_parser, settings.tool_call_parser, engine.tokenizer)
    server = GrpcServer(
        engine,
        settings.host,
        settings.grpc_port,
        parser_cls,
        reasoning=bool(settings.reasoning_parser),
        tool_calls=bool(settings.tool_call_parser),
        api_keys=list(settings.api_keys),
        metrics=metrics,
        admission=admission,
        max_message_bytes=settings.max_request_bytes,
        credentials=settings.tls.server_credentials() if settings.tls is not None else None,
        log_requests=settings.log_requests,
        grammars=grammars,
        write_timeout=settings.write_timeout,
        store=store,
        stream_interval=settings.stream_interval,
        private_address=f"unix:{role.socket_path}" if role is not None else None,
        share_port=role is not None and role.count > 1,
    )
    await server.load_adapters(settings.lora_modules)
    if role is not None and role.count > 1:
        server.adapters.fix(
            f"with --frontends {role.count}: each frontend keeps its own adapter names; name them at start with "
            "--lora-modules"
        )
    await server.start()
    if role is not None:
        # The shared port may answer from another frontend: this one's own socket.
        await grpc_healthy(f"unix:{role.socket_path}")
    elif settings.tls is None:
        await grpc_healthy(f"{local(settings.host)}:{server.port}")
    else:
        await tls_listening(local(settings.host), server.port)
    return server


async def serve(settings: ServeSettings, role: FrontendRole | None = None) -> int:
    """Serve until stopped; `role`: as one of several frontends (chatgen.frontends), which gives it no gateway."""
    # Orphans of a dead engine core are re-parented here, and ended with the rest at exit.
    reaper.become_subreaper()
    grammars = grammar_check(settings)
    try:
        engine = await _start_engine(settings.engine, settings.limits, role.client if role is not None else None)
    except BaseException:
        if grammars is not None:
            grammars.close()
        raise
    server: GrpcServer | None = None
    envoy: EnvoyProcess | None = None
    store: ResponseStore | None = None
    work_dir = settings.gateway.work_dir if settings.gateway is not None else default_work_dir()
    # Envoy's rendered config goes there; a directory this process made is removed when it exits.
    made_work_dir = not work_dir.exists()
    try:
        metrics = Metrics(engine) if settings.metrics_port or (role is not None and role.metrics) else None
        admission = Admission(settings.limits, on_reject=metrics.rejected.inc if metrics is not None else None)
        metrics_port = _serve_metrics(settings, metrics, admission, role)
        store = open_store(settings.response_store, default_cache_dir(), settings.response_store_limits)
        _note(f"responses are stored in {store.where}")
        server = await _start_server(settings, engine, admission, metrics, grammars, store, role)
        if settings.gateway is not None:
            envoy = EnvoyProcess(replace(settings.gateway, grpc_port=server.port))
            envoy.start()
            await envoy.wait_ready()
        if grammars is not None:
            # Ready means warm: the worker's own start (seconds of CPU: transformers, xgrammar, the tokenizer)
            # would otherwise run beside the first requests.
            await grammars.wait_started()
        _note(f"{freeze_startup_heap()} start-up objects frozen out of the garbage collector's reach")
        if role is not None:
            role.ready.put((role.index, metrics_port))
        return await _run_until_stopped(settings, engine, server, envoy, admission, role is None)
    finally:
        _note("shutting down")
        if server is not None:
            # Requests still running after the drain (grace period over, or a second signal) were told why; the
            # few that have not sent it yet get STOP_SECONDS, then grpc cancels what remains.
            await server.stop(STOP_SECONDS)
        if envoy is not None:
            envoy.stop()
        if grammars is not None:
            grammars.close()
        if store is not None:
            await store.close()
        if made_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        await engine.shutdown()
        # Frozen objects are never collected, not even at exit, where native extensions (triton's nanobind) then
        # report them as leaks.
        gc.unfreeze()
        ended = await asyncio.get_running_loop().run_in_executor(None, reaper.end_descendants)
        if ended:
            _note(f"ended {len(ended)} processes left behind (pids {', '.join(map(str, ended))})")


def _serve_metrics(
    settings: ServeSettings, metrics: Metrics | None, admission: Admission, role: FrontendRole | None
) -> int:
    """Start /metrics where it is on; returns its port (0: off). A frontend's is on loopback, on a free port,
    without keys: the supervisor serves them all, with a `frontend` label, behind the keys."""
    if metrics is None:
        return 0
    metrics.watch(admission)
    if role is not None:
        return metrics.serve("127.0.0.1", 0)
    return metrics.serve(settings.host, settings.metrics_port, settings.api_keys)


async def _watch_engine(engine: Engine, server: GrpcServer, interval: float = 1.0) -> str:
    """Return (with the reason) once the engine can no longer serve: a call found it dead, or its health check
    failed."""
    while True:
        try:
            await asyncio.wait_for(server.engine_failed.wait(), interval)
            return server.engine_failure
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


async def _run_until_stopped(
    settings: ServeSettings,
    engine: Engine,
    server: GrpcServer,
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
        print(ready_line(settings, engine.model.name, engine.name, server.port), flush=True)
    signalled = asyncio.ensure_future(signals.get())
    engine_died = asyncio.ensure_future(_watch_engine(engine, server))
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
    return await _drain(server, admission, signals, reason, grace, code)


async def _drain(
    server: GrpcServer, admission: Admission, signals: asyncio.Queue[int], reason: str, grace: float, code: int
) -> int:
    """Probes see NOT_SERVING, new requests get UNAVAILABLE / 503, admitted ones may finish within `grace`
    (a second signal ends the wait). Those still running then end with an error of their own."""
    admission.drain(reason)
    await server.set_serving(False)
    _note(f"draining: {admission.running} running, {admission.waiting} waiting (up to {grace:g} s)")
    second = asyncio.ensure_future(signals.get())
    idle = asyncio.ensure_future(admission.idle())
    done, _ = await asyncio.wait([second, idle], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    if idle not in done:
        log.warning("stopping with %d requests still running", admission.running + admission.waiting)
        # Each gets UNAVAILABLE (a REST stream its error event and [DONE]) before the server stops, which would
        # cut them with no word of why.
        await server.api.revoke(reason)
        await asyncio.wait([idle], timeout=REVOKE_SECONDS)
    idle.cancel()
    return code


def run_gateway(settings: GatewaySettings, render_only: bool) -> int:
    """Render the config and replace this process with Envoy: signals then reach Envoy itself, as a container's
    main process should receive them."""
    config = render_config(settings)
    if render_only:
        print(config)
        return 0
    command = envoy_command(settings, config)
    _note(f"gateway: {' '.join(command)}")
    os.execv(command[0], command)
