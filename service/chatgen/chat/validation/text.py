"""The rules every string of a request follows, whatever field it is in: no NUL character (U+0000), which
tokenizers and C libraries take as the end of a string, and identifiers of bounded length, since the service
copies them into ids, logs and error messages. Other control characters are text like any other: they go to the
tokenizer as sent.

One walk over the request message checks them all, Struct values (tool parameters, JSON schemas, template
kwargs) included; each error names the field as a JSON path (`messages[2].content`, `tools[0].function.name`).
"""

from __future__ import annotations

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chatgen.errors import invalid, shown

# Identifiers by field name (the same name means the same kind of thing wherever it occurs in the contract):
# a tool call's id and the id a tool message answers, a function's or a message author's name, the end user,
# the caller's id for the request (which becomes the completion id in every chunk). Not `model`: a name that
# is not the served model's is not found, however long (its error quotes part of it, the log a bounded part).
MAX_CHARS: dict[str, int] = {
    "id": 256,
    "tool_call_id": 256,
    "name": 64,
    "user": 256,
    # OpenAI's successors to `user`: the key requests are kept together by (for the prefix cache), the end user.
    "prompt_cache_key": 256,
    "safety_identifier": 256,
    "request_id": 128,
    # A LoRA adapter's name, which requests then send as `model` and /v1/models lists.
    "lora_name": 256,
}


def check_strings(message: Message, path: str = "") -> None:
    """Raise the error naming the first string of `message` that breaks a rule."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    _check(item, f"{where}[{i}]", None)
            else:
                _check(value, where, MAX_CHARS.get(field.name))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    _check_key(key, where)
                    if isinstance(item, Message):
                        _check_value(item, f"{where}.{key}")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    _check_value(item, f"{where}[{i}]")
            else:
                _check_value(value, where)


def _check_value(message: Message, where: str) -> None:
    """A message field: JSON values (Struct, Value, ListValue) by their JSON shape, any other by its fields."""
    if isinstance(message, struct_pb2.Value):
        kind = message.WhichOneof("kind")
        if kind == "string_value":
            _check(message.string_value, where, None)
        elif kind == "struct_value":
            _check_value(message.struct_value, where)
        elif kind == "list_value":
            _check_value(message.list_value, where)
    elif isinstance(message, struct_pb2.Struct):
        for key, item in message.fields.items():
            _check_key(key, where)
            _check_value(item, f"{where}.{key}")
    elif isinstance(message, struct_pb2.ListValue):
        for i, item in enumerate(message.values):
            _check_value(item, f"{where}[{i}]")
    else:
        check_strings(message, where)


def _check_key(key: object, where: str) -> None:
    if isinstance(key, str) and "\x00" in key:
        raise invalid(f"{where} has a key with a NUL character (U+0000)", where)


def _check(value: str, where: str, limit: int | None) -> None:
    if "\x00" in value:
        raise invalid(f"{where} contains a NUL character (U+0000)", where)
    if limit is not None and len(value) > limit:
        raise invalid(f"{where} is longer than {limit} characters: {shown(value)}", where)


def fits_request_id(value: str) -> bool:
    """Whether `value` may be a request id: 1 to 128 printable ASCII characters (what an x-request-id header can
    carry). A request's `request_id` field that is not is a 400; a metadata id that is not is replaced."""
    return 0 < len(value) <= MAX_CHARS["request_id"] and value.isascii() and value.isprintable()


def request_id(value: str) -> str | None:
    """The caller's request id (None when it sent none): printable ASCII, as the x-request-id header's (its
    length is checked with every other string's)."""
    if value and not fits_request_id(value):
        raise invalid(f"request_id must be printable ASCII: {shown(value)}", "request_id")
    return value or None
