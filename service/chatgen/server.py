"""The gRPC server: the services chatgen.app wires, plus standard health checking and reflection, its listeners,
and whether it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chatgen.chat.adapters import Adapters
from chatgen.chat.admission import Admission
from chatgen.chat.api import ChatApi
from chatgen.v1 import chatgen_pb2 as pb

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


class Serving:
    """Whether this server serves, and why not: what its health service, /health and /ping answer. An engine found
    dead (engine_died, which the chat layer calls) takes the server out of rotation and makes it drain."""

    def __init__(self, admission: Admission | None) -> None:
        self.health = health.aio.HealthServicer()
        self._admission = admission
        # Why the server does not serve now (None while it does).
        self.not_serving: str | None = "starting"
        # Set (with its reason) when a call found the engine dead: the process then drains and exits.
        self.engine_failed = asyncio.Event()
        self.engine_failure = ""

    async def set(self, serving: bool, reason: str = "draining") -> None:
        if not serving and self.engine_failure:
            reason = f"the engine failed: {self.engine_failure}"
        self.not_serving = None if serving else reason
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)

    async def set_alive(self, alive: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if alive else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(LIVENESS, status)

    async def engine_died(self, reason: str) -> None:
        """A call found the engine dead: out of rotation and no new work before that call's caller hears of it."""
        if self.engine_failed.is_set():
            return
        self.engine_failure = reason
        self.engine_failed.set()
        if self._admission is not None:
            self._admission.drain(f"The engine failed and this server is restarting: {reason}")
        await self.set(False)


@dataclass(frozen=True)
class Listener:
    """Where the server listens: host:port (TLS with `credentials`), and `private_address` (e.g.
    `unix:/run/frontend-0.sock`), a second, plaintext listener of this server alone, where a local Envoy reaches
    it when several frontends share the port (`share_port`: SO_REUSEPORT, the kernel spreading the callers'
    connections between them)."""

    host: str
    port: int
    credentials: grpc.ServerCredentials | None = None
    private_address: str | None = None
    share_port: bool = False


# A generated add_<Service>Servicer_to_server function and the servicer it adds.
Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any]


class GrpcServer:
    """The grpc server of the services it is given (chatgen.app wires them), with standard health checking and
    reflection, on its listeners."""

    def __init__(
        self,
        listener: Listener,
        serving: Serving,
        services: Sequence[Registration],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_message_bytes: int = 16 * 1024 * 1024,
        handlers: Sequence[tuple[str, grpc.GenericRpcHandler]] = (),
    ) -> None:
        """`handlers`: services without generated stubs (name, handler), such as ORCA's."""
        self.serving = serving
        self.server = grpc.aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                # Room for all that the gateway passes on (its limit is 16 KiB of headers, plus what Envoy adds).
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.so_reuseport", 1 if listener.share_port else 0),
            ],
        )
        for register, servicer in services:
            register(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(serving.health, self.server)
        self.server.add_generic_rpc_handlers(tuple(handler for _, handler in handlers))
        served = [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME, *(name for name, _ in handlers)]
        reflection.enable_server_reflection(served, self.server)
        self.port = self._listen(listener)

    def _listen(self, listener: Listener) -> int:
        address = f"{listener.host}:{listener.port}"
        if listener.credentials is not None:
            port = self.server.add_secure_port(address, listener.credentials)
        else:
            port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        if listener.private_address is not None and not self.server.add_insecure_port(listener.private_address):
            raise OSError(f"cannot listen for gRPC on {listener.private_address}")
        return port

    async def start(self) -> None:
        await self.server.start()
        await self.serving.set_alive(True)
        await self.serving.set(True)

    async def set_serving(self, serving: bool, reason: str = "draining") -> None:
        await self.serving.set(serving, reason)

    async def stop(self, grace: float | None) -> None:
        await self.serving.set(False)
        await self.serving.set_alive(False)
        await self.server.stop(grace)


@dataclass(frozen=True)
class Service:
    """The gRPC side of a running chatgen: its server, the chat layer's entry point, the adapters it serves, and
    whether it serves."""

    server: GrpcServer
    api: ChatApi
    adapters: Adapters
    serving: Serving

    @property
    def port(self) -> int:
        return self.server.port
