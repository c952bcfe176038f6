"""What `vllm serve` answers besides the OpenAI API (ServingService): /version, /health and SageMaker's /ping
(200 while the engine serves, 503 once it does not), and SageMaker's /invocations, which runs a chat
completions or a completions body as its own endpoint would."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

import grpc
from google.api.httpbody_pb2 import HttpBody

from chatgen.errors import ApiError, Failure, invalid
from chatgen.transport import status
from chatgen.transport.servicers import ChatServicer, GenerateServicer
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

Handler = Callable[[HttpBody, grpc.aio.ServicerContext], AsyncIterator[HttpBody]]


class ServingServicer(pb_grpc.ServingServiceServicer):
    def __init__(
        self,
        version: pb.GetVersionResponse,
        not_serving: Callable[[], str | None],
        chat: ChatServicer,
        generate: GenerateServicer,
    ) -> None:
        self._version = version
        # Why the server does not serve now (draining, the engine failed); None while it serves.
        self._not_serving = not_serving
        self._chat, self._generate = chat, generate

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

    async def InvokeHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> AsyncIterator[HttpBody]:
        try:
            handler = self._handler(body.data)
        except ApiError as err:
            await status.abort(context, err)
            return
        # The endpoints' handlers are async generators: closed here, a caller that went away stops their work.
        bodies = cast(AsyncGenerator[HttpBody, None], handler(body, context))
        async with contextlib.aclosing(bodies):
            async for out in bodies:
                yield out

    def _handler(self, data: bytes) -> Handler:
        """The endpoint a body is for, by its shape: `messages` is chat, `prompt` completions. A body that is not
        JSON goes to chat, which answers it as any endpoint does."""
        try:
            shape = json.loads(data)
        except (ValueError, RecursionError):
            return self._chat.CreateChatCompletionHttp
        if isinstance(shape, dict) and "messages" in shape:
            return self._chat.CreateChatCompletionHttp
        if isinstance(shape, dict) and "prompt" in shape:
            return self._generate.CreateCompletionHttp
        raise invalid(
            "an /invocations body is a chat completions request (with 'messages') or a completions request "
            "(with 'prompt')",
            "messages",
        )
