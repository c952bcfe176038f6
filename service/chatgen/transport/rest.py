"""The REST API's bodies: OpenAI's JSON in, checked against the request message's own descriptor, and the
reply message out as JSON.

The gateway passes the body as it came (google.api.HttpBody): the proto3 JSON mapping Envoy's transcoder parses
with is lenient where OpenAI is strict (`"max_tokens": "3"`, `"stream": "yes"`, an object for a one-element
array). Here the JSON's types are checked with jsonschema against a schema derived from the message descriptor
(the .proto stays the one definition of the fields), before json_format parses it into the same message a gRPC
caller sends. Unknown keys are ignored, as vLLM ignores them; null stands for "not sent", as in OpenAI's API.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, TypeVar

import jsonschema
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from chatgen.errors import invalid
from chatgen.transport import unserved
from chatgen.transport.sse import json_text

M = TypeVar("M", bound=Message)

CONTENT_TYPE = "application/json"
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
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Value": {},
    "google.protobuf.Struct": {"type": ["object", "null"]},
    "google.protobuf.ListValue": {"type": ["array", "null"]},
}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_SCHEMA_TYPES = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
                 "integer": "an integer", "number": "a number"}  # fmt: skip


def _value_schema(field: FieldDescriptor) -> dict[str, Any]:
    """The JSON one value of `field` may take (an element, where it is repeated)."""
    if field.message_type is not None:
        return message_schema(field.message_type)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field.type in _NUMBERS:
        return {"type": "number"}
    if field.type in _STRINGS:
        return {"type": "string"}
    low, high = _INT_RANGES[field.type]
    return {"type": "integer", "minimum": low, "maximum": high}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    kind = field.message_type
    if kind is not None and kind.GetOptions().map_entry:
        # Map keys are JSON object keys (strings) already.
        return {"type": ["object", "null"], "additionalProperties": _value_schema(kind.fields_by_name["value"])}
    if field.is_repeated:
        return {"type": ["array", "null"], "items": _value_schema(field)}
    return _nullable(_value_schema(field))


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return schema


@functools.cache
def message_schema(descriptor: Descriptor) -> dict[str, Any]:
    """The JSON Schema of a message's JSON (objects keyed by the .proto field names)."""
    if descriptor.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[descriptor.full_name]
    properties = {field.name: _field_schema(field) for field in descriptor.fields}
    return {"type": "object", "properties": properties}


@functools.cache
def _validator(descriptor: Descriptor) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(message_schema(descriptor))


def param_path(path: Sequence[str | int]) -> str:
    """["messages", 0, "content"] -> "messages[0].content", as the error table names fields."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    field = param_path(error.absolute_path)
    if not field:
        return "The request body must be a JSON object"
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = " or ".join(_SCHEMA_TYPES[t] for t in wanted if t != "null")
        got = _JSON_TYPES.get(type(error.instance), "a number")
        return f"Invalid type for '{field}': expected {expected}, but got {got} instead"
    return f"Invalid value for '{field}': {error.message}"


def _no_constant(name: str) -> None:
    # Python's json takes NaN and Infinity, which JSON (and OpenAI) do not.
    raise ValueError(f"{name} is not a JSON value")


def parse(data: bytes, message_type: type[M]) -> M:
    """A request body -> the request message; a body that is not JSON, or JSON of the wrong shape, is a 400, and
    an extension of vLLM's that is not served a 400 unsupported_parameter (transport.unserved)."""
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}") from None
    unserved.check(body, message_type.DESCRIPTOR.full_name)
    error = jsonschema.exceptions.best_match(_validator(message_type.DESCRIPTOR).iter_errors(body))
    if error is not None:
        raise invalid(_describe(error), param_path(error.absolute_path) or None)
    try:
        return json_format.ParseDict(body, message_type(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise invalid(f"The request body does not fit the request: {exc}") from None


def json_body(message: Message) -> httpbody_pb2.HttpBody:
    """A unary reply as the HttpBody an HttpBody RPC answers with: the REST API's JSON."""
    return httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=render(message))


def render(message: Message) -> bytes:
    """A reply message as the REST API's JSON."""
    return json_text(message).encode()
