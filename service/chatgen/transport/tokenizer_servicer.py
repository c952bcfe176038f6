"""vLLM's tokenizer endpoints as gRPC calls (TokenizerService): each one ChatApi call, for gRPC callers as typed
messages and for REST callers (POST /tokenize, /detokenize) as the same messages in JSON."""

from __future__ import annotations

import grpc
from google.api.httpbody_pb2 import HttpBody

from chatgen.chat.api import ChatApi
from chatgen.transport import rest, status
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    def __init__(self, api: ChatApi) -> None:
        self._api = api

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        return await status.unary(context, self._tokenize(request))

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        return await status.unary(context, self._detokenize(request))

    async def TokenizeHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> HttpBody:
        return await status.unary(context, self._tokenize_http(body))

    async def DetokenizeHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> HttpBody:
        return await status.unary(context, self._detokenize_http(body))

    async def _tokenize(self, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
        tokens = await self._api.tokenize(request)
        return pb.TokenizeResponse(
            count=len(tokens.ids), max_model_len=tokens.max_model_len, tokens=tokens.ids, token_strs=tokens.texts
        )

    async def _detokenize(self, request: pb.DetokenizeRequest) -> pb.DetokenizeResponse:
        return pb.DetokenizeResponse(prompt=await self._api.detokenize(request))

    async def _tokenize_http(self, body: HttpBody) -> HttpBody:
        return rest.json_body(await self._tokenize(rest.parse(body.data, pb.TokenizeRequest)))

    async def _detokenize_http(self, body: HttpBody) -> HttpBody:
        return rest.json_body(await self._detokenize(rest.parse(body.data, pb.DetokenizeRequest)))
