"""`chatgen` command line: `chatgen serve` runs the gRPC server and the Envoy REST gateway together."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.chat.parsing import load_parser_class
from chatgen.engine import Engine
from chatgen.engine.factory import ENGINES, create_engine, resolve_model
from chatgen.gateway import EnvoyProcess, GatewaySettings, default_work_dir
from chatgen.metrics import Metrics
from chatgen.server import GrpcServer
from chatgen.transport.auth import load_keys

log = logging.getLogger("chatgen")

DESCRIPTION = """\
chatgen: an LLM chat & completions service with a typed gRPC API and an OpenAI-compatible REST API.

  chatgen serve                       serve the embedded SmolLM2-135M-Instruct on the CPU
  chatgen serve --model DIR           serve a Hugging Face model directory (or hub id, where a hub is reachable)

REST (through Envoy):  POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}
gRPC:                  chatgen.v1.Chat, chatgen.v1.Generate, chatgen.v1.Models, grpc.health.v1.Health, reflection
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one worth showing (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatgen", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the gRPC server and the REST gateway",
        description="Run the chatgen gRPC server and, unless --no-gateway, Envoy serving the OpenAI REST API.",
        formatter_class=_HelpFormatter,
    )
    model = serve.add_argument_group("model")
    model.add_argument(
        "--model", metavar="PATH", default=None, help="HF model directory or hub id (default: embedded SmolLM2)"
    )
    model.add_argument(
        "--served-model-name", metavar="NAME", default=None, help="name clients send as `model` (default: from --model)"
    )
    model.add_argument("--engine", choices=ENGINES, default="auto", help="auto: vllm where it imports, else hf")
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
    net = serve.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0", help="address both listeners bind to")
    net.add_argument("--grpc-port", metavar="PORT", type=int, default=50051, help="gRPC port")
    net.add_argument("--http-port", metavar="PORT", type=int, default=8000, help="REST (Envoy) port")
    net.add_argument(
        "--envoy-admin-port", metavar="PORT", type=int, default=9901, help="Envoy admin (binds 127.0.0.1 only)"
    )
    net.add_argument("--metrics-port", metavar="PORT", type=int, default=9400, help="Prometheus /metrics (0: off)")
    net.add_argument("--no-gateway", action="store_true", help="serve gRPC only, without Envoy")
    net.add_argument("--envoy-concurrency", metavar="N", type=int, default=2, help="Envoy worker threads")
    auth = serve.add_argument_group("authentication (off unless a key is given)")
    auth.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        default=[],
        help="accept this key (repeatable); also CHATGEN_API_KEYS=k1,k2",
    )
    auth.add_argument("--api-key-file", metavar="PATH", default=None, help="file with one key per line")
    serve.add_argument(
        "--shutdown-grace", metavar="SECONDS", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return parser


async def _grpc_healthy(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gRPC server at {address} did not become healthy")
            await asyncio.sleep(0.1)


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def serve(args: argparse.Namespace) -> int:
    choice = resolve_model(args.model, args.served_model_name)
    engine = create_engine(args.engine, choice, args.max_model_len, args.dtype)
    print(f"[chatgen] starting the {engine.name} engine on {choice.path}", file=sys.stderr, flush=True)
    started = time.monotonic()
    await engine.start()
    print(f"[chatgen] engine ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    server: GrpcServer | None = None
    envoy: EnvoyProcess | None = None
    try:
        metrics = Metrics(engine) if args.metrics_port else None
        if metrics is not None:
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
        )
        await server.start()
        await _grpc_healthy(f"{_local(args.host)}:{server.port}")
        if not args.no_gateway:
            envoy = EnvoyProcess(
                GatewaySettings(
                    http_host=args.host,
                    http_port=args.http_port,
                    grpc_host=_local(args.host),
                    grpc_port=server.port,
                    admin_port=args.envoy_admin_port,
                    work_dir=default_work_dir(),
                    concurrency=args.envoy_concurrency,
                )
            )
            envoy.start()
            await envoy.wait_ready()
        return await _run_until_stopped(args, engine, server, envoy)
    finally:
        print("[chatgen] shutting down", file=sys.stderr, flush=True)
        if envoy is not None:
            envoy.stop()
        if server is not None:
            await server.stop(args.shutdown_grace)
        await engine.shutdown()


async def _run_until_stopped(
    args: argparse.Namespace, engine: Engine, server: GrpcServer, envoy: EnvoyProcess | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    host = _local(args.host)
    rest = f", REST on http://{host}:{args.http_port}/v1" if envoy else ""
    print(
        f"[chatgen] ready: model '{engine.model.name}' ({engine.name}), gRPC on {host}:{server.port}{rest}", flush=True
    )
    waits = [asyncio.ensure_future(stop.wait())]
    if envoy is not None:
        waits.append(asyncio.ensure_future(envoy.wait_exit()))
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if stop.is_set():
        return 0
    log.error("Envoy exited unexpectedly; shutting down so the supervisor restarts the service")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return asyncio.run(serve(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
