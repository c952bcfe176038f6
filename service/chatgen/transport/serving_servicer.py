"""What `vllm serve` answers besides the OpenAI API (ServingService): /version, /health and SageMaker's /ping
(200 while the engine serves, 503 once it does not). SageMaker's /invocations needs nothing here: the gateway
routes its body to chat or completions by its shape."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.api.httpbody_pb2 import HttpBody

from chatgen.errors import ApiError, Failure
from chatgen.transport import status
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


class ServingServicer(pb_grpc.ServingServiceServicer):
    def __init__(self, version: pb.GetVersionResponse, not_serving: Callable[[], str | None]) -> None:
        self._version = version
        # Why the server does not serve now (draining, the engine failed); None while it serves.
        self._not_serving = not_serving

    async def GetVersion(
        self, request: pb.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetVersionResponse:
        return self._version

    async def CheckHealthHttp(self, request: pb.CheckHealthRequest, context: grpc.aio.ServicerContext) -> HttpBody:
        return await self._health(context)

    async def PingHttp(self, request: pb.CheckHealthRequest, context: grpc.aio.ServicerContext) -> HttpBody:
        return await self._health(context)

    async def _health(self, context: grpc.aio.ServicerContext) -> HttpBody:
        reason = self._not_serving()
        if reason is not None:
            await status.abort(context, ApiError(Failure.ENGINE_UNAVAILABLE, f"Not serving: {reason}"))
        # An empty 200, as vLLM answers.
        return HttpBody()
