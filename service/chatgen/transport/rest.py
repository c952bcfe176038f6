"""The REST API's bodies: OpenAI's JSON in, parsed into the request message a gRPC caller sends, and the reply
message out as JSON.

The gateway has checked the body's JSON types against the request message's fields already (its Lua filter,
gateway/json_types.lua: the proto3 JSON mapping is lenient where OpenAI is strict) and refused the vLLM extensions
that are not served, so what is left here is the parse: a body that is not JSON, or not an object, is a 400.
Unknown keys are ignored, as vLLM ignores them; null stands for "not sent", as in OpenAI's API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeVar

from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from chatgen.errors import invalid
from chatgen.transport.json_mapping import json_text

M = TypeVar("M", bound=Message)

CONTENT_TYPE = "application/json"


def param_path(path: Sequence[str | int]) -> str:
    """["messages", 0, "content"] -> "messages[0].content", as the error table names fields."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _no_constant(name: str) -> None:
    # Python's json takes NaN and Infinity, which JSON (and OpenAI) do not.
    raise ValueError(f"{name} is not a JSON value")


def parse(data: bytes, message_type: type[M]) -> M:
    """A request body -> the request message; a body that is not a JSON object, or does not fit the message, is a
    400."""
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
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
