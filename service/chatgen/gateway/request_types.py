"""What the gateway checks in a REST body before the server sees it (request_types.json, read by the Lua filter's
json_types.lua): each path's request message as a tree of the JSON types its fields take, from the message
descriptors (the .proto stays the one definition of the fields), and the vLLM extensions that are not served
(unserved.py).

The tree's nodes ({"t": kind, ...}): "object" (a message: "fields", [name, node] in the .proto's order), "map"
("values"), "array" ("items"), "integer" ("min", "max": the field's range, and as text), "number", "boolean",
"string" (strings, bytes and enums), and the well-known types' JSON: "any" (google.protobuf.Value), "struct",
"list". Every field may be null, which means "not sent"; an array's element or a map's value may not.

"routes" names, per request message that typed RPCs take, the REST path of each by its `google.api.http` binding:
"unary" and "stream" (the server-streaming one), and "events", how the stream's events are written: "data"
(OpenAI's chat and completions chunks, then `data: [DONE]`) or "named" (`event: <type>` lines, as the Messages and
Responses APIs send them). The Lua filter sends a body to the RPC its `stream` asks for, since each API has one
path for both and the transcoder routes by path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from chatgen.gateway.unserved import NESTED, UNSERVED
from chatgen.v1 import chatgen_pb2 as pb

FILE = "request_types.json"

# The REST paths whose JSON body the gateway checks, and the request message each body is.
PATHS: dict[str, type[Message]] = {
    "/v1/chat/completions": pb.CreateChatCompletionRequest,
    "/v1/completions": pb.CreateCompletionRequest,
    "/v1/messages": pb.CreateMessageRequest,
    "/v1/messages/count_tokens": pb.CountMessageTokensRequest,
    "/v1/responses": pb.CreateResponseRequest,
    "/tokenize": pb.TokenizeRequest,
    "/detokenize": pb.DetokenizeRequest,
    "/v1/load_lora_adapter": pb.LoadLoraAdapterRequest,
    "/v1/unload_lora_adapter": pb.UnloadLoraAdapterRequest,
}
# SageMaker's /invocations is a chat or a completions body, by the key it has; the gateway routes it as that.
SHAPES: dict[str, list[tuple[str, type[Message]]]] = {
    "/invocations": [("messages", pb.CreateChatCompletionRequest), ("prompt", pb.CreateCompletionRequest)]
}

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_NUMBERS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_STRINGS = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_ENUM}
# Well-known types whose JSON is not an object of their fields.
_WELL_KNOWN = {"google.protobuf.Value": "any", "google.protobuf.Struct": "struct", "google.protobuf.ListValue": "list"}


def _value_node(field: FieldDescriptor) -> dict[str, Any]:
    """The JSON one value of `field` may take (an element, where it is repeated)."""
    if field.message_type is not None:
        return message_node(field.message_type)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return {"t": "boolean"}
    if field.type in _NUMBERS:
        return {"t": "number"}
    if field.type in _STRINGS:
        return {"t": "string"}
    low, high = _INT_RANGES[field.type]
    # The bounds' text too: a 64-bit one is not exact as the double Lua compares with.
    return {"t": "integer", "min": low, "max": high, "min_text": str(low), "max_text": str(high)}


def _field_node(field: FieldDescriptor) -> dict[str, Any]:
    kind = field.message_type
    if kind is not None and kind.GetOptions().map_entry:
        # Map keys are JSON object keys (strings) already.
        return {"t": "map", "values": _value_node(kind.fields_by_name["value"])}
    if field.is_repeated:
        return {"t": "array", "items": _value_node(field)}
    return _value_node(field)


def message_node(descriptor: Descriptor) -> dict[str, Any]:
    """The JSON types of a message's JSON (objects keyed by the .proto field names)."""
    if descriptor.full_name in _WELL_KNOWN:
        return {"t": _WELL_KNOWN[descriptor.full_name]}
    return {"t": "object", "fields": [[field.name, _field_node(field)] for field in descriptor.fields]}


def _unserved(descriptor: Descriptor) -> dict[str, Any]:
    keys = UNSERVED.get(descriptor.full_name, {})
    nested = [[name, list(options.items())] for name, options in NESTED.items() if name in descriptor.fields_by_name]
    return {"keys": list(keys.items()), "nested": nested if keys else []}


# The stream events that carry their own name (a `type`), written as `event: <type>` lines.
NAMED_EVENTS = (pb.StreamMessageResponse, pb.ResponseStreamEvent)


def routes() -> dict[str, dict[str, str]]:
    """Request message name -> {"unary": path, "stream": path, "events": how}: the POST bindings of the RPCs that
    take it."""
    named = {m.DESCRIPTOR.full_name for m in NAMED_EVENTS}
    out: dict[str, dict[str, str]] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            # The …Http RPCs take the body as it came (google.api.HttpBody): no typed twin to pick.
            if rule.post and rule.body == "*" and method.input_type.full_name != "google.api.HttpBody":
                route = out.setdefault(method.input_type.full_name, {})
                if method.server_streaming:
                    route["stream"] = rule.post
                    route["events"] = "named" if method.output_type.full_name in named else "data"
                else:
                    route["unary"] = rule.post
    return {name: paths for name, paths in sorted(out.items()) if {"unary", "stream"} <= set(paths)}


def request_types() -> dict[str, Any]:
    """The whole file: paths -> message names, per message its type tree and its unserved extensions, and the
    typed RPCs' paths."""
    messages = {m.DESCRIPTOR for m in PATHS.values()} | {m.DESCRIPTOR for s in SHAPES.values() for _, m in s}
    ordered = sorted(messages, key=lambda d: d.full_name)
    return {
        "paths": {path: m.DESCRIPTOR.full_name for path, m in PATHS.items()},
        "shapes": {path: [[key, m.DESCRIPTOR.full_name] for key, m in shapes] for path, shapes in SHAPES.items()},
        "messages": {d.full_name: message_node(d) for d in ordered},
        "unserved": {d.full_name: _unserved(d) for d in ordered},
        "routes": routes(),
    }


def text() -> str:
    return json.dumps(request_types(), indent=1) + "\n"


def write_request_types(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text())
    return path
