"""The Models service: /v1/models lists the served model and the LoRA adapters loaded over it (vLLM's model
cards, with `root` and `parent`), and vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter change which
adapters those are. Each RPC is one call into chat.adapters."""

from __future__ import annotations

import time

import grpc
from google.api.httpbody_pb2 import HttpBody
from google.protobuf import struct_pb2

from chatgen.chat.adapters import Adapter, Adapters
from chatgen.chat.validation.adapters import validate_load, validate_unload
from chatgen.errors import ApiError, Failure, shown
from chatgen.transport import rest, status
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

# vLLM answers its adapter endpoints in plain text.
TEXT = "text/plain; charset=utf-8"


class ModelsServicer(pb_grpc.ModelsServiceServicer):
    def __init__(self, base: pb.Model, adapters: Adapters) -> None:
        self._base = base
        self._adapters = adapters

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        cards = [self._card(adapter) for adapter in self._adapters.by_name.values()]
        return pb.ListModelsResponse(object="list", data=[self._base, *cards])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        return await status.unary(context, self._model(request.id))

    async def LoadLoraAdapter(
        self, request: pb.LoadLoraAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadLoraAdapterResponse:
        return await status.unary(context, self._load(request))

    async def UnloadLoraAdapter(
        self, request: pb.UnloadLoraAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadLoraAdapterResponse:
        return await status.unary(context, self._unload(request))

    async def LoadLoraAdapterHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> HttpBody:
        return await status.unary(context, self._load_http(body))

    async def UnloadLoraAdapterHttp(self, body: HttpBody, context: grpc.aio.ServicerContext) -> HttpBody:
        return await status.unary(context, self._unload_http(body))

    async def _model(self, model_id: str) -> pb.Model:
        if model_id == self._base.id:
            return self._base
        adapter = self._adapters.by_name.get(model_id)
        if adapter is None:
            raise ApiError(Failure.MODEL_NOT_FOUND, f"The model {shown(model_id)} does not exist", "model")
        return self._card(adapter)

    async def _load(self, request: pb.LoadLoraAdapterRequest) -> pb.LoadLoraAdapterResponse:
        adapter = await self._adapters.load(validate_load(request))
        message = f"Success: LoRA adapter '{adapter.name}' added successfully."
        return pb.LoadLoraAdapterResponse(message=message, model=self._card(adapter))

    async def _unload(self, request: pb.UnloadLoraAdapterRequest) -> pb.UnloadLoraAdapterResponse:
        name = validate_unload(request)
        await self._adapters.unload(name)
        return pb.UnloadLoraAdapterResponse(message=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _load_http(self, body: HttpBody) -> HttpBody:
        reply = await self._load(rest.parse(body.data, pb.LoadLoraAdapterRequest))
        return HttpBody(content_type=TEXT, data=reply.message.encode())

    async def _unload_http(self, body: HttpBody) -> HttpBody:
        reply = await self._unload(rest.parse(body.data, pb.UnloadLoraAdapterRequest))
        return HttpBody(content_type=TEXT, data=reply.message.encode())

    def _card(self, adapter: Adapter) -> pb.Model:
        """An adapter's model card: the base model's, under the adapter's name, rooted at its path."""
        card = pb.Model()
        card.CopyFrom(self._base)
        card.id, card.root, card.created = adapter.name, adapter.path, int(time.time())
        card.parent.CopyFrom(struct_pb2.Value(string_value=self._base.id))
        return card
