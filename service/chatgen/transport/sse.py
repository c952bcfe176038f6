"""Stream chunks as Server-Sent Events, the bytes of the REST gateway's streaming responses.

Each chunk becomes `data: <JSON>\\n\\n`, its JSON the proto3 JSON mapping of the message (field names as in the
.proto, fields without presence printed: `"index": 0` and `"choices": []` are sent), except for the delta's
`"tool_calls": []`, which OpenAI sends only when a delta carries a tool call. Unary replies are the same JSON.

Rendering a message through json_format costs ≈ 40 µs, more than the whole transcoder did per token, so the chunk
that almost every token is — one choice, its delta holding only `content` (or only the reasoning), or for
completions only `text` — is rendered once per stream with a placeholder, split around it, and afterwards only the
token's text is escaped into place: the same bytes for ≈ 2 µs, from the chat layer's delta, with no chunk message
built (building one and reading it back costs the serving process more than the transcoder saved).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from chatgen.v1 import chatgen_pb2 as pb

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"

_dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# A string no token text is compared with: only its JSON form is searched for, in a rendering of our own.
_PLACEHOLDER = "\x00chatgen-text\x00"


# Repeated fields (which have no presence) that are left out of the JSON when empty, by message: OpenAI sends a
# delta's tool_calls only when it carries one, vLLM the token ids only when asked for them.
_TOKEN_IDS = ("token_ids", "prompt_token_ids")
_LEFT_OUT_WHEN_EMPTY: dict[str, tuple[str, ...]] = {
    "ChatCompletionDelta": ("tool_calls",),
    "ChatCompletionChoice": _TOKEN_IDS,
    "CreateChatCompletionResponse": _TOKEN_IDS,
    "ChatCompletionChunkChoice": _TOKEN_IDS,
    "StreamChatCompletionResponse": _TOKEN_IDS,
    "CompletionChoice": _TOKEN_IDS,
    "CompletionChunkChoice": _TOKEN_IDS,
}


def _in_field_order(data: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """json_format's dict with its keys in the .proto's order (it puts fields printed for having no presence
    last), as the transcoder printed them: `"index"` first, as OpenAI sends it. The empty lists of
    _LEFT_OUT_WHEN_EMPTY are left out here, and an error's absent `param` is `null`: OpenAI's error object always
    has all four keys, as chatgen's other error replies do."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in data:
            if descriptor.name == "ErrorDetail":
                out[field.name] = None
            continue
        value = data[field.name]
        if field.name == "prompt_logprobs":
            value = _integral_ranks(value)
        kind = field.message_type
        if value == [] and field.name in _LEFT_OUT_WHEN_EMPTY.get(descriptor.name, ()):
            continue
        if kind is not None and not kind.full_name.startswith("google.protobuf.") and not kind.GetOptions().map_entry:
            if isinstance(value, list):
                value = [_in_field_order(v, kind) for v in value]
            else:
                value = _in_field_order(value, kind)
        out[field.name] = value
    return out


def _integral_ranks(steps: list[Any]) -> list[Any]:
    """prompt_logprobs travel as JSON values, whose numbers are doubles: ranks go out as the integers they are."""
    for step in steps:
        for entry in (step or {}).values():
            if isinstance(entry.get("rank"), float):
                entry["rank"] = int(entry["rank"])
    return steps


def json_text(message: Message) -> str:
    """Any reply message as the REST API's JSON, through json_format."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _dumps(_in_field_order(data, message.DESCRIPTOR))


def event(chunk: pb.StreamChatCompletionResponse | pb.StreamCompletionResponse) -> bytes:
    """Any chunk, through json_format."""
    return ("data: " + json_text(chunk) + "\n\n").encode()


class Bodies:
    """One stream's SSE bytes as HttpBody messages; the first carries the content type."""

    # What ends the stream, after its last chunk.
    done = DONE

    def __init__(self) -> None:
        self._first = True

    def body(self, data: bytes) -> httpbody_pb2.HttpBody:
        if self._first:
            self._first = False
            return httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=data)
        return httpbody_pb2.HttpBody(data=data)


class NamedEvents(Bodies):
    """Stream events (messages with a `type`) -> HttpBody messages of named SSE events, as the Messages and
    Responses APIs send them: `event: <type>` then the JSON. Neither stream ends with `[DONE]`."""

    done = b""

    def chunk(self, event: Any) -> httpbody_pb2.HttpBody:
        return self.body(f"event: {event.type}\ndata: {json_text(event)}\n\n".encode())


class Events(Bodies):
    """One stream's chunks -> HttpBody messages of SSE bytes. `envelope` is a chunk holding the stream's object,
    created and model (as every chunk of it does)."""

    def __init__(self, envelope: pb.StreamChatCompletionResponse | pb.StreamCompletionResponse) -> None:
        super().__init__()
        self._envelope = envelope
        # (choice index, text field) -> the event's bytes around each place the JSON string of the text goes.
        self._frames: dict[tuple[int, str], list[bytes]] = {}

    def serve_as(self, model: str) -> None:
        """Every chunk names `model` (a LoRA adapter's name, once the request is parsed)."""
        self._envelope.model = model
        self._frames.clear()

    def chunk(self, chunk: pb.StreamChatCompletionResponse | pb.StreamCompletionResponse) -> httpbody_pb2.HttpBody:
        return self.body(event(chunk))

    def text(self, completion_id: str, index: int, field: str, text: str) -> httpbody_pb2.HttpBody:
        """The event of the chunk whose one choice `index` holds only `field` = `text` (a chat delta's `content`
        or its reasoning — `reasoning_content` and `reasoning` both — or a completion's `text`): the same bytes as
        `chunk` gives for it."""
        frame = self._frames.get((index, field))
        if frame is None:
            frame = self._frames[(index, field)] = self._frame(completion_id, index, field)
        return self.body(_dumps(text).encode().join(frame))

    def _frame(self, completion_id: str, index: int, field: str) -> list[bytes]:
        """That chunk rendered with a placeholder text, split at the placeholder."""
        template = type(self._envelope)()
        template.CopyFrom(self._envelope)
        template.id = completion_id
        choice = template.choices.add(index=index)
        if field == "text":
            choice.text = _PLACEHOLDER
        elif field == "reasoning_content":
            choice.delta.reasoning_content = choice.delta.reasoning = _PLACEHOLDER
        else:
            setattr(choice.delta, field, _PLACEHOLDER)
        parts = event(template).split(_dumps(_PLACEHOLDER).encode())
        if len(parts) < 2:
            raise AssertionError("the placeholder is missing from its own rendering")
        return parts
