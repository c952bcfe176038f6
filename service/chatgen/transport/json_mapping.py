"""The REST API's JSON of a reply message as the server writes it: the replies of the …Http RPCs (the tokenizer,
LoRA), the stored Responses API objects, and the reference the gateway's rewrites of Envoy's JSON are tested against.

The JSON is the proto3 JSON mapping of the message (field names as in the .proto, fields without presence
printed: `"index": 0` and `"choices": []` are sent), in the .proto's field order as Envoy's transcoder prints it,
except for the repeated fields OpenAI and vLLM send only when they apply (_LEFT_OUT_WHEN_EMPTY; the gateway's Lua
filter leaves the same ones out of the chat and completions replies Envoy renders, gateway/replies.lua).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

_dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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
