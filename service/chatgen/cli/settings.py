"""Parsed flags -> the typed settings chatgen.app runs with."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from chatgen.api_keys import ENV_VAR, load_keys
from chatgen.app import EngineSettings, ServeSettings
from chatgen.chat.adapters import AdapterModule
from chatgen.chat.admission import AdmissionLimits
from chatgen.chat.coalescing import StreamInterval
from chatgen.engine.factory import SimulatorTiming, resolve_model
from chatgen.gateway import GatewaySettings, default_work_dir
from chatgen.gateway.backends import BackendsError, load_backends
from chatgen.probes import local
from chatgen.store import StoreLimits
from chatgen.tls import TlsFiles, tls_files

log = logging.getLogger("chatgen")

# Requests Envoy may forward beyond the server's admission limits: model listings, probes, and requests the
# server turns away itself (with its own 429).
UPSTREAM_HEADROOM = 64


def _simulator_timing(text: str) -> SimulatorTiming:
    try:
        ttft, itl, tokens = text.split(",")
        return SimulatorTiming(float(ttft), float(itl), int(tokens))
    except ValueError:
        raise SystemExit(f"--simulator-timing wants TTFT_MS,ITL_MS,TOKENS (e.g. 50,10,64), got {text!r}") from None


def lora_module(text: str) -> AdapterModule:
    """One --lora-modules value, in either of vLLM's forms: name=path, or a JSON object with name and path."""
    if text.lstrip().startswith("{"):
        try:
            given = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--lora-modules: {text!r} is not JSON: {exc}") from None
        if not isinstance(given, dict) or not {"name", "path"} <= set(given) <= {"name", "path", "base_model_name"}:
            raise SystemExit(f'--lora-modules: JSON modules are {{"name": ..., "path": ...}}, got {text!r}')
        name, path = given["name"], given["path"]
        if not (isinstance(name, str) and isinstance(path, str)):
            raise SystemExit(f"--lora-modules: name and path are strings, got {text!r}")
    else:
        name, sep, path = text.partition("=")
        if not sep:
            raise SystemExit(f"--lora-modules wants name=path, got {text!r}")
    if not name or not path:
        raise SystemExit(f"--lora-modules: an adapter needs a name and a path, got {text!r}")
    return AdapterModule(name, path)


def stream_interval(args: argparse.Namespace) -> StreamInterval:
    if args.stream_interval < 1:
        raise SystemExit(f"--stream-interval must be 1 or more, got {args.stream_interval}")
    if args.stream_interval_ms < 0:
        raise SystemExit(f"--stream-interval-ms must be 0 or more, got {args.stream_interval_ms}")
    return StreamInterval(args.stream_interval, args.stream_interval_ms)


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


def _api_keys(args: argparse.Namespace) -> list[str]:
    if args.api_key:
        # Every user of the machine can read a process's command line (ps, /proc/PID/cmdline).
        log.warning(
            "--api-key puts the key on the command line, where every user of this machine can read it (ps); "
            "use --api-key-file or the %s environment variable",
            ENV_VAR,
        )
    return load_keys(args.api_key, args.api_key_file)


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """`chatgen serve`'s flags as settings."""
    tls = tls_files(args.tls_cert, args.tls_key)
    engine = EngineSettings(
        kind=args.engine,
        model=resolve_model(args.model, args.served_model_name),
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        simulator=_simulator_timing(args.simulator_timing),
        argv=args.engine_argv,
    )
    gateway = None
    if not args.no_gateway:
        # The gRPC port is filled in once the server listens.
        gateway = gateway_settings(args, tls, local(args.host), args.grpc_port, default_work_dir())
    return ServeSettings(
        engine=engine,
        host=args.host,
        grpc_port=args.grpc_port,
        limits=AdmissionLimits(args.max_running, args.max_waiting),
        max_request_bytes=args.max_request_bytes,
        gateway=gateway,
        metrics_port=args.metrics_port,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        api_keys=tuple(_api_keys(args)),
        tls=tls,
        shutdown_grace=args.shutdown_grace,
        log_requests=not args.no_request_log,
        max_grammar_seconds=args.max_grammar_seconds,
        write_timeout=args.write_timeout,
        response_store=args.response_store,
        response_store_limits=StoreLimits(args.response_store_max_age * 3600.0, args.response_store_max_mb << 20),
        lora_modules=tuple(lora_module(text) for text in args.lora_modules),
        stream_interval=stream_interval(args),
        frontends=int(args.frontends),
    )


def standalone_gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    """`chatgen gateway`'s flags as settings (with --backends: the shared gateway's routes)."""
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir()
    tls = tls_files(args.tls_cert, args.tls_key)
    settings = replace(gateway_settings(args, tls, args.grpc_host, args.grpc_port, work_dir), log_level=args.log_level)
    if args.backends:
        try:
            models = load_backends(Path(args.backends))
        except BackendsError as exc:
            raise SystemExit(f"chatgen gateway: {exc}") from None
        settings = replace(settings, models=models, rendered_at=int(time.time()))
    return settings
