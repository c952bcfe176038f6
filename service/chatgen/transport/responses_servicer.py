"""The Responses API's servicer: each call one chat-layer call, plus the conversation state — a stored response's
items continue a conversation (previous_response_id), and each response is stored (unless `store` is false) under
its caller's API key, so that no other key's caller can read, continue or delete it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from chatgen.chat.api import ChatApi
from chatgen.chat.types import Choice, StreamItem, Usage
from chatgen.chat.validation.responses import ResponsesTranslation, as_item_messages, conversation, translate
from chatgen.errors import ApiError, Failure, shown
from chatgen.store import ResponseStore, StoredResponse
from chatgen.transport import status
from chatgen.transport.auth import presented_key
from chatgen.transport.json_mapping import json_text
from chatgen.transport.responses import (
    CONVERSATION_KEY,
    OutputIds,
    ResponseEvents,
    conversation_of,
    envelope,
    finish,
    output_items,
    response_id,
)
from chatgen.transport.servicers import from_gateway
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc


class ResponsesServicer(pb_grpc.ResponsesServiceServicer):
    def __init__(self, api: ChatApi, store: ResponseStore, keyed: bool, write_timeout: float = 0.0) -> None:
        self._api = api
        self._store = store
        # Whether callers present API keys (each one's responses are then its own).
        self._keyed = keyed
        self._write_timeout = write_timeout

    def _owner(self, context: grpc.aio.ServicerContext) -> str:
        """Whose the call's responses are: a digest of its API key (never the key itself); "" without keys."""
        if not self._keyed:
            return ""
        key = presented_key(context.invocation_metadata()) or ""
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def _named(context: grpc.aio.ServicerContext) -> str | None:
        """The conversation key the caller named for a conversation's first turn (the shared gateway does), if any:
        like a metadata request id, one of the wrong form is replaced by a new one, not refused."""
        for key, value in context.invocation_metadata() or ():
            if key == CONVERSATION_KEY and isinstance(value, str):
                return value
        return None

    async def CreateResponse(self, request: pb.CreateResponseRequest, context: grpc.aio.ServicerContext) -> pb.Response:
        return await status.unary(context, self._create(request, self._owner(context), self._named(context)))

    async def StreamResponse(
        self, request: pb.CreateResponseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ResponseStreamEvent]:
        events = ResponseEvents()
        items = self._stream(request, self._owner(context), self._named(context), events)
        relayed = status.stream(context, events.chunks(items), events.error, from_gateway(context), self._write_timeout)
        async with contextlib.aclosing(relayed):
            async for event in relayed:
                yield event

    async def GetResponse(self, request: pb.GetResponseRequest, context: grpc.aio.ServicerContext) -> pb.Response:
        return await status.unary(context, self._get(request.response_id, self._owner(context)))

    async def DeleteResponse(
        self, request: pb.DeleteResponseRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponseResponse:
        return await status.unary(context, self._delete(request.response_id, self._owner(context)))

    async def ListInputItems(
        self, request: pb.ListInputItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInputItemsResponse:
        return await status.unary(context, self._input_items(request.response_id, self._owner(context)))

    async def _stored(self, rid: str, owner: str, param: str | None = None) -> StoredResponse:
        record = await self._store.get(rid) if rid else None
        # Another key's response is as absent as one never stored: its id must not tell whether it exists.
        if record is None or record.owner != owner:
            raise ApiError(Failure.RESPONSE_NOT_FOUND, f"No response with id {shown(rid)} is stored", param)
        return record

    async def _translation(
        self, request: pb.CreateResponseRequest, owner: str, streaming: bool
    ) -> ResponsesTranslation:
        earlier: list[dict[str, Any]] = []
        if request.HasField("previous_response_id"):
            record = await self._stored(request.previous_response_id, owner, "previous_response_id")
            earlier = conversation(record.input_items_json, json_format.Parse(record.response_json, pb.Response()))
        return translate(request, earlier, streaming)

    @staticmethod
    def _conversation(request: pb.CreateResponseRequest, named: str | None) -> str:
        previous = request.previous_response_id if request.HasField("previous_response_id") else None
        return conversation_of(previous, named)

    async def _create(self, request: pb.CreateResponseRequest, owner: str, named: str | None) -> pb.Response:
        translation = await self._translation(request, owner, streaming=False)
        result = await self._api.translated(translation)
        response = envelope(request, response_id(self._conversation(request, named), result.id), request.model)
        choice = result.choices[0]
        response.output.extend(output_items(choice, OutputIds()))
        await self._finish(request, owner, translation, response, choice, result.usage)
        return response

    async def _stream(
        self, request: pb.CreateResponseRequest, owner: str, named: str | None, events: ResponseEvents
    ) -> AsyncGenerator[StreamItem, None]:
        translation = await self._translation(request, owner, streaming=True)

        async def done(response: pb.Response, choice: Choice, usage: Usage) -> None:
            await self._finish(request, owner, translation, response, choice, usage)

        events.begin(envelope(request, "", request.model), self._conversation(request, named), done)
        async with contextlib.aclosing(self._api.translated_stream(translation)) as items:
            async for item in items:
                yield item

    async def _finish(
        self,
        request: pb.CreateResponseRequest,
        owner: str,
        translation: ResponsesTranslation,
        response: pb.Response,
        choice: Choice,
        usage: Usage,
    ) -> None:
        """Status and usage on a finished response; then it is stored, unless the request said not to."""
        reasoning_tokens = await self._api.text_tokens(choice.reasoning) if choice.reasoning else 0
        finish(response, choice, usage, reasoning_tokens)
        if response.store:
            record = StoredResponse(
                response.id, owner, time.time(), json_text(response), json.dumps(list(translation.items))
            )
            await self._store.put(record)

    async def _get(self, rid: str, owner: str) -> pb.Response:
        return json_format.Parse((await self._stored(rid, owner)).response_json, pb.Response())

    async def _delete(self, rid: str, owner: str) -> pb.DeleteResponseResponse:
        await self._stored(rid, owner)
        await self._store.delete(rid)
        return pb.DeleteResponseResponse(id=rid, object="response", deleted=True)

    async def _input_items(self, rid: str, owner: str) -> pb.ListInputItemsResponse:
        # Newest first, as OpenAI lists them by default.
        items = as_item_messages(json.loads((await self._stored(rid, owner)).input_items_json))[::-1]
        out = pb.ListInputItemsResponse(object="list", data=items, has_more=False)
        if items:
            out.first_id, out.last_id = items[0].id, items[-1].id
        return out
