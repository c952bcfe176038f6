"""`chatgen` command line: `chatgen serve` runs the gRPC server and the Envoy REST gateway together."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.backends import BackendsError, load_backends
from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.chat.parsing import load_parser_class
from chatgen.engine import Engine, EngineError
from chatgen.engine.factory import ENGINES, SimulatorTiming, create_engine, resolve_model
from chatgen.gateway import (
    EnvoyProcess,
    GatewaySettings,
    default_work_dir,
    drain_gateway,
    envoy_command,
    envoy_workers,
    render_config,
)
from chatgen.metrics import Metrics
from chatgen.server import GrpcServer
from chatgen.tls import TlsFiles, handshake_ok, tls_files
from chatgen.transport.auth import load_keys

log = logging.getLogger("chatgen")

# Requests Envoy may forward beyond the server's admission limits: model listings, probes, and requests the
# server turns away itself (with its own 429).
UPSTREAM_HEADROOM = 64

DESCRIPTION = """\
chatgen: an LLM chat & completions service with a typed gRPC API and an OpenAI-compatible REST API.

  chatgen serve                       serve the embedded SmolLM2-135M-Instruct on the CPU
  chatgen serve --model DIR           serve a Hugging Face model directory (or hub id, where a hub is reachable)
  chatgen gateway --grpc-port 50051   only the REST gateway (Envoy), in front of a gRPC server started apart

Every flag can also come from the environment as CHATGEN_<FLAG> (CHATGEN_MAX_RUNNING=64, CHATGEN_NO_GATEWAY=1):
one set of settings (a Kubernetes ConfigMap) configures the server and its gateway alike.

REST (through Envoy):  POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}
gRPC:                  chatgen.v1.Chat, chatgen.v1.Generate, chatgen.v1.Models, grpc.health.v1.Health, reflection
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one worth showing (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser(environ: Mapping[str, str] | None = None, command: str | None = None) -> argparse.ArgumentParser:
    """chatgen's flags; with `environ`, CHATGEN_<FLAG> variables in it set the defaults of `command`'s flags."""
    parser = argparse.ArgumentParser(
        prog="chatgen", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the gRPC server and the REST gateway",
        description="Run the chatgen gRPC server and, unless --no-gateway, Envoy serving the OpenAI REST API. "
        "Any other flag is a vLLM engine argument, as `vllm serve` takes it (list: --help-engine).",
        formatter_class=_HelpFormatter,
        # A vLLM flag must never be taken for an abbreviation of a chatgen flag.
        allow_abbrev=False,
    )
    serve.add_argument("--help-engine", action="store_true", help="list the vLLM engine arguments and exit")
    model = serve.add_argument_group("model")
    model.add_argument(
        "--model", metavar="PATH", default=None, help="HF model directory or hub id (default: embedded SmolLM2)"
    )
    model.add_argument(
        "--served-model-name", metavar="NAME", default=None, help="name clients send as `model` (default: from --model)"
    )
    model.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto: vllm where it imports, else hf; simulator: fake token timing, no model (load tests only)",
    )
    model.add_argument(
        "--simulator-timing",
        metavar="TTFT_MS,ITL_MS,TOKENS",
        default="50,10,64",
        help="token simulator: first-token delay, gap between tokens, tokens per reply",
    )
    model.add_argument(
        "--max-model-len", metavar="N", type=int, default=2048, help="context length (prompt + output tokens)"
    )
    model.add_argument(
        "--reasoning-parser",
        metavar="NAME",
        default=None,
        help="vLLM reasoning parser for the model (e.g. qwen3, deepseek_r1): splits <think> output into "
        "reasoning_content",
    )
    model.add_argument(
        "--tool-call-parser",
        metavar="NAME",
        default=None,
        help="vLLM tool-call parser for the model (e.g. hermes): turns its tool calls into message.tool_calls",
    )
    model.add_argument("--dtype", default="auto", help="weights dtype (auto: float32 on CPUs, model's own on GPUs)")
    net = _network_args(serve)
    net.add_argument("--metrics-port", metavar="PORT", type=int, default=9400, help="Prometheus /metrics (0: off)")
    net.add_argument("--no-gateway", action="store_true", help="serve gRPC only, without Envoy")
    auth = serve.add_argument_group("authentication (off unless a key is given)")
    auth.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        default=[],
        help="accept this key (repeatable); also CHATGEN_API_KEYS=k1,k2",
    )
    auth.add_argument("--api-key-file", metavar="PATH", default=None, help="file with one key per line")
    _load_args(serve)
    serve.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take to finish (a second signal stops at once)",
    )
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level")
    serve.add_argument(
        "--no-request-log",
        action="store_true",
        help="no log line per chat/completion call (JSON: request id, status, tokens, latencies; logger "
        "chatgen.requests at INFO)",
    )

    gateway = sub.add_parser(
        "gateway",
        help="run only the REST gateway (Envoy) in front of a gRPC server started apart",
        description="Render the Envoy config `chatgen serve` would run and exec Envoy with it, in front of a "
        "chatgen gRPC server started on its own (`chatgen serve --no-gateway`): the gateway as a separate "
        "container, e.g. a Kubernetes sidecar. Give it the server's --max-running/--max-waiting, so that its "
        "circuit breaker matches the server's admission limits.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    _network_args(gateway)
    gateway.add_argument(
        "--grpc-host", default="127.0.0.1", help="where the gRPC server listens (a sidecar: the pod's loopback)"
    )
    gateway.add_argument(
        "--backends",
        metavar="FILE",
        default=None,
        help="the shared gateway: a YAML file listing models and the chatgen gRPC servers (host:port) of each; "
        "requests are routed by their `model`, replicas balanced by least request (--grpc-host/--grpc-port unused)",
    )
    gateway.add_argument(
        "--work-dir", metavar="DIR", default=None, help="where the rendered config goes (default: a /tmp directory)"
    )
    gateway.add_argument(
        "--render-only", action="store_true", help="write the config, descriptor set and Lua filter, print the path"
    )
    _load_args(gateway)
    gateway.add_argument("--log-level", default="warning", choices=LOG_LEVELS, help="Envoy's log level")

    drain = sub.add_parser(
        "gateway-drain",
        help="drain a running gateway before it stops (a Kubernetes preStop hook)",
        description="Tell the gateway's Envoy (through its admin port, on this host) to fail its /healthz and drain "
        "its listeners, then wait until its REST calls in flight have finished (or --timeout passes): the streams "
        "it carries end normally before Envoy gets its SIGTERM.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    _envoy_admin_port(drain, "the gateway's Envoy admin")
    drain.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=40.0, help="stop waiting for calls in flight after this"
    )
    drain.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="wait at least this long, while load balancers take the failing /healthz out of rotation",
    )
    if environ is not None:
        # Only the command being run: a variable meant for one must not fail the other.
        chosen = {"gateway": gateway, "gateway-drain": drain}.get(command or "", serve)
        _environment_defaults(chosen, environ)
    return parser


def environment_names(command: str) -> set[str]:
    """The CHATGEN_<FLAG> variables `chatgen <command>` reads (CHATGEN_API_KEYS aside)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {_variable(a) for a in sub.choices[command]._actions if _from_environment(a)}


def _variable(action: argparse.Action) -> str:
    return "CHATGEN_" + action.dest.upper()


def _from_environment(action: argparse.Action) -> bool:
    # API keys have their own variable, CHATGEN_API_KEYS (a list).
    return bool(action.option_strings) and action.dest not in ("help", "api_key")


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _envoy_admin_port(group: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    # One default for the gateway that binds it and the drain that calls it (CHATGEN_ENVOY_ADMIN_PORT for both).
    group.add_argument("--envoy-admin-port", metavar="PORT", type=int, default=9901, help=help)


def _network_args(command: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    net = command.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0", help="address the listeners bind to")
    net.add_argument("--grpc-port", metavar="PORT", type=int, default=50051, help="gRPC port")
    net.add_argument("--http-port", metavar="PORT", type=int, default=8000, help="REST (Envoy) port")
    _envoy_admin_port(net, "Envoy admin (binds 127.0.0.1 only)")
    net.add_argument(
        "--envoy-stats-port",
        metavar="PORT",
        type=int,
        default=0,
        help="serve Envoy's Prometheus stats (GET /stats/prometheus, nothing else of the admin) here (0: off)",
    )
    net.add_argument(
        "--envoy-concurrency",
        metavar="N",
        type=envoy_workers,
        default="auto",
        help="Envoy worker threads; auto: one per 4 CPUs this process may use (affinity, cgroup CPU limit), 1 to 4",
    )
    net.add_argument("--tls-cert", metavar="PEM", default=None, help="serve gRPC and REST over TLS: certificate chain")
    net.add_argument("--tls-key", metavar="PEM", default=None, help="the certificate's private key")
    return net


def _load_args(command: argparse.ArgumentParser) -> None:
    load = command.add_argument_group("load")
    load.add_argument(
        "--max-running",
        metavar="N",
        type=int,
        default=AdmissionLimits.max_running,
        help="choices generating at once (also vLLM's max_num_seqs)",
    )
    load.add_argument(
        "--max-waiting",
        metavar="N",
        type=int,
        default=AdmissionLimits.max_waiting,
        help="choices that may wait for a slot; beyond it requests get RESOURCE_EXHAUSTED / HTTP 429",
    )
    load.add_argument(
        "--max-request-bytes",
        metavar="BYTES",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request body (REST: 413) or message (gRPC: RESOURCE_EXHAUSTED)",
    )
    load.add_argument(
        "--max-connections", metavar="N", type=int, default=4096, help="REST client connections Envoy accepts"
    )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _environment_defaults(command: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """CHATGEN_<FLAG> in the environment is that flag's default; a flag on the command line still wins."""
    defaults: dict[str, object] = {}
    for action in command._actions:
        name = _variable(action)
        if not _from_environment(action) or name not in environ:
            continue
        value = environ[name].strip()
        try:
            if isinstance(action, argparse._StoreTrueAction):
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(value)
                defaults[action.dest] = value.lower() in _TRUE
            else:
                converted = action.type(value) if callable(action.type) else value
                if action.choices is not None and converted not in action.choices:
                    raise ValueError(value)
                defaults[action.dest] = converted
        except ValueError:
            command.error(f"{name}={environ[name]!r} is not a valid value for {action.option_strings[0]}")
    command.set_defaults(**defaults)


async def _poll(ready: Callable[[], Awaitable[bool]], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not await ready():
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        await asyncio.sleep(0.1)


async def _grpc_healthy(address: str, timeout: float = 60.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await _poll(serving, timeout, f"gRPC server at {address} did not become healthy")


async def _tls_listening(host: str, port: int, timeout: float = 60.0) -> None:
    # Health is SERVING in-process already; this checks the TLS port itself (see chatgen.tls on verification).
    await _poll(
        lambda: handshake_ok(host, port), timeout, f"the gRPC TLS port {host}:{port} does not complete a handshake"
    )


def _simulator_timing(text: str) -> SimulatorTiming:
    try:
        ttft, itl, tokens = text.split(",")
        return SimulatorTiming(float(ttft), float(itl), int(tokens))
    except ValueError:
        raise SystemExit(f"--simulator-timing wants TTFT_MS,ITL_MS,TOKENS (e.g. 50,10,64), got {text!r}") from None


def gateway_settings(
    args: argparse.Namespace, tls: TlsFiles | None, grpc_host: str, grpc_port: int, work_dir: Path
) -> GatewaySettings:
    """The gateway's settings from the flags `chatgen serve` and `chatgen gateway` share (`tls`: their checked
    --tls-cert/--tls-key)."""
    return GatewaySettings(
        http_host=args.host,
        http_port=args.http_port,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        admin_port=args.envoy_admin_port,
        work_dir=work_dir,
        concurrency=args.envoy_concurrency,
        max_body_bytes=args.max_request_bytes,
        max_connections=args.max_connections,
        # Room above the server's own limit, so callers see the server's 429 first.
        max_upstream_requests=args.max_running + args.max_waiting + UPSTREAM_HEADROOM,
        tls=tls,
        upstream_tls=tls is not None,
        stats_port=args.envoy_stats_port,
    )


def gateway(args: argparse.Namespace) -> int:
    """Render the config and replace this process with Envoy: signals then reach Envoy itself, as a container's
    main process should receive them."""
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir()
    tls = tls_files(args.tls_cert, args.tls_key)
    settings = replace(gateway_settings(args, tls, args.grpc_host, args.grpc_port, work_dir), log_level=args.log_level)
    if args.backends:
        try:
            models = load_backends(Path(args.backends))
        except BackendsError as exc:
            raise SystemExit(f"chatgen gateway: {exc}") from None
        settings = replace(settings, models=models, rendered_at=int(time.time()))
    config = render_config(settings)
    if args.render_only:
        print(config)
        return 0
    command = envoy_command(settings, config)
    print(f"[chatgen] gateway: {' '.join(command)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def serve(args: argparse.Namespace) -> int:
    tls = tls_files(args.tls_cert, args.tls_key)
    choice = resolve_model(args.model, args.served_model_name)
    limits = AdmissionLimits(args.max_running, args.max_waiting)
    engine = create_engine(
        args.engine,
        choice,
        args.max_model_len,
        args.dtype,
        max_num_seqs=limits.max_running,
        simulator=_simulator_timing(args.simulator_timing),
        engine_argv=args.engine_argv,
    )
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    note = f"[chatgen] starting the {engine.name} engine on {choice.path} ({loop} event loop)"
    print(note, file=sys.stderr, flush=True)
    started = time.monotonic()
    await engine.start()
    print(f"[chatgen] engine ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    server: GrpcServer | None = None
    envoy: EnvoyProcess | None = None
    work_dir = default_work_dir()
    # Envoy's rendered config goes there; a directory this process made is removed when it exits.
    made_work_dir = not work_dir.exists()
    try:
        metrics = Metrics(engine) if args.metrics_port else None
        admission = Admission(limits, on_reject=metrics.rejected.inc if metrics is not None else None)
        if metrics is not None:
            metrics.watch(admission)
            metrics.serve(args.host, args.metrics_port)
        parser_cls = load_parser_class(args.reasoning_parser, args.tool_call_parser, engine.tokenizer)
        server = GrpcServer(
            engine,
            args.host,
            args.grpc_port,
            parser_cls,
            reasoning=bool(args.reasoning_parser),
            tool_calls=bool(args.tool_call_parser),
            api_keys=load_keys(args.api_key, args.api_key_file),
            metrics=metrics,
            admission=admission,
            max_message_bytes=args.max_request_bytes,
            credentials=tls.server_credentials() if tls is not None else None,
            log_requests=not args.no_request_log,
        )
        await server.start()
        if tls is None:
            await _grpc_healthy(f"{_local(args.host)}:{server.port}")
        else:
            await _tls_listening(_local(args.host), server.port)
        if not args.no_gateway:
            envoy = EnvoyProcess(gateway_settings(args, tls, _local(args.host), server.port, work_dir))
            envoy.start()
            await envoy.wait_ready()
        frozen = freeze_startup_heap()
        note = f"[chatgen] {frozen} start-up objects frozen out of the garbage collector's reach"
        print(note, file=sys.stderr, flush=True)
        return await _run_until_stopped(args, engine, server, envoy, admission)
    finally:
        print("[chatgen] shutting down", file=sys.stderr, flush=True)
        if server is not None:
            # Requests still running after the drain (grace period over, or a second signal) are cancelled.
            await server.stop(0)
        if envoy is not None:
            envoy.stop()
        if made_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        await engine.shutdown()
        # Frozen objects are never collected, not even at exit, where native extensions (triton's nanobind) then
        # report them as leaks.
        gc.unfreeze()


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
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


async def _watch_engine(engine: Engine, interval: float = 1.0) -> str:
    """Return (with the reason) once the engine can no longer serve."""
    while True:
        try:
            await engine.check_health()
        except EngineError as exc:
            return str(exc)
        await asyncio.sleep(interval)


async def _run_until_stopped(
    args: argparse.Namespace, engine: Engine, server: GrpcServer, envoy: EnvoyProcess | None, admission: Admission
) -> int:
    """Serve until SIGTERM/SIGINT (then drain and return 0) or until Envoy or the engine dies (return 1, so the
    supervisor restarts the service)."""
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    host = _local(args.host)
    tls = args.tls_cert is not None
    rest = f", REST on {'https' if tls else 'http'}://{host}:{args.http_port}/v1" if envoy else ""
    print(
        f"[chatgen] ready: model '{engine.model.name}' ({engine.name}), gRPC{' (TLS)' if tls else ''} on "
        f"{host}:{server.port}{rest}",
        flush=True,
    )
    signalled = asyncio.ensure_future(signals.get())
    engine_died = asyncio.ensure_future(_watch_engine(engine))
    envoy_exited = asyncio.ensure_future(envoy.wait_exit() if envoy is not None else asyncio.Event().wait())
    waits = [signalled, engine_died, envoy_exited]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()

    if engine_died.done() and not engine_died.cancelled():
        reason = f"The engine failed and this server is restarting: {engine_died.result()}"
        log.error("%s", reason)
        code, grace = 1, min(args.shutdown_grace, 5.0)
    elif envoy_exited.done() and not envoy_exited.cancelled():
        log.error("Envoy exited unexpectedly; shutting down so the supervisor restarts the service")
        reason, code, grace = "The server is restarting", 1, min(args.shutdown_grace, 5.0)
    else:
        reason, code, grace = "The server is shutting down; retry on another replica", 0, args.shutdown_grace
    # Drain: probes see NOT_SERVING, new requests get UNAVAILABLE / 503, admitted ones may finish.
    admission.drain(reason)
    await server.set_serving(False)
    print(
        f"[chatgen] draining: {admission.running} running, {admission.waiting} waiting (up to {grace:g} s)",
        file=sys.stderr,
        flush=True,
    )
    second = asyncio.ensure_future(signals.get())
    idle = asyncio.ensure_future(admission.idle())
    done, _ = await asyncio.wait([second, idle], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    idle.cancel()
    if idle not in done:
        log.warning("stopping with %d requests still running", admission.running + admission.waiting)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(os.environ, next((a for a in argv if not a.startswith("-")), None))
    # What chatgen does not know goes to vLLM's own parser (chatgen.engine.vllm_args).
    args, engine_argv = parser.parse_known_args(argv)
    if args.command != "serve" and engine_argv:
        parser.error(f"unrecognized arguments: {' '.join(engine_argv)}")
    args.engine_argv = tuple(engine_argv)
    if getattr(args, "help_engine", False):
        from chatgen.engine.vllm_args import engine_help

        print(engine_help())
        return 0
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(serve(args))
    if args.command == "gateway":
        return gateway(args)
    if args.command == "gateway-drain":
        return drain_gateway(args.envoy_admin_port, args.timeout, args.settle)
    return 2


if __name__ == "__main__":
    sys.exit(main())
