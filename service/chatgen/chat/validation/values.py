"""Readers for the request fields whose JSON may take several shapes (google.protobuf.Value and Struct): each
returns the one typed value the rest of the service uses, or raises the error that names the field at fault."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message as ProtoMessage

from chatgen.errors import invalid, shown


def as_python(message: ProtoMessage) -> Any:
    """A Struct (or a message with Struct fields) as plain JSON data. JSON numbers arrive as doubles; integral
    ones become ints again, since JSON Schema keywords like maxItems and template code like range(n) need ints."""

    def fix(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(json_format.MessageToDict(message, preserving_proto_field_name=True))


def kind(value: struct_pb2.Value) -> str | None:
    """The JSON type a Value holds: None when the field was not sent, else "null_value", "string_value", ..."""
    return value.WhichOneof("kind")


def is_absent(value: struct_pb2.Value) -> bool:
    return kind(value) in (None, "null_value")


def content_text(value: struct_pb2.Value, param: str) -> str:
    """OpenAI message content: a string, or an array of `{"type": "text", "text": ...}` parts (joined)."""
    k = kind(value)
    if k == "string_value":
        return value.string_value
    if k == "list_value":
        texts: list[str] = []
        for i, part in enumerate(value.list_value.values):
            fields = part.struct_value.fields if kind(part) == "struct_value" else None
            if fields is None or fields.get("type", struct_pb2.Value()).string_value != "text":
                raise invalid(f"{param}[{i}] must be a content part of type 'text'", f"{param}[{i}]")
            text = fields.get("text")
            if text is None or kind(text) != "string_value":
                raise invalid(f"{param}[{i}].text must be a string", f"{param}[{i}].text")
            texts.append(text.string_value)
        return "".join(texts)
    raise invalid(f"{param} must be a string or an array of content parts", param)


def stop_strings(value: struct_pb2.Value) -> tuple[str, ...]:
    """`stop`: a string or an array of strings (empty ones dropped); absent or null: none."""
    k = kind(value)
    if is_absent(value):
        return ()
    if k == "string_value":
        return (value.string_value,) if value.string_value else ()
    if k == "list_value":
        out: list[str] = []
        for i, item in enumerate(value.list_value.values):
            if kind(item) != "string_value":
                raise invalid(f"stop[{i}] must be a string", f"stop[{i}]")
            if item.string_value:
                out.append(item.string_value)
        return tuple(out)
    raise invalid("'stop' must be a string or an array of strings", "stop")


# A completion prompt: text, or token ids as the client tokenized it.
Prompt = str | tuple[int, ...]
_PROMPT_SHAPES = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def prompts(value: struct_pb2.Value) -> tuple[Prompt, ...]:
    """`prompt`, as OpenAI takes it: one string, a batch of strings, one prompt of token ids, or a batch of those.
    A batch is never empty and never mixes shapes."""
    if is_absent(value):
        raise invalid("'prompt' is required", "prompt")
    k = kind(value)
    if k == "string_value":
        return (_text_prompt(value.string_value, "prompt"),)
    if k != "list_value":
        raise invalid(f"'prompt' must be {_PROMPT_SHAPES}", "prompt")
    items = value.list_value.values
    if not items:
        raise invalid("'prompt' must not be an empty array", "prompt")
    kinds = {kind(item) for item in items}
    if kinds == {"number_value"}:
        return (_token_prompt(items, "prompt"),)
    if kinds == {"string_value"}:
        return tuple(_text_prompt(item.string_value, f"prompt[{i}]") for i, item in enumerate(items))
    if kinds == {"list_value"}:
        return tuple(_token_prompt(item.list_value.values, f"prompt[{i}]") for i, item in enumerate(items))
    raise invalid(f"'prompt' must be {_PROMPT_SHAPES}, not a mix of them", "prompt")


def _text_prompt(text: str, param: str) -> str:
    if not text:
        raise invalid(f"'{param}' must be a non-empty string", param)
    return text


def _token_prompt(items: Any, param: str) -> tuple[int, ...]:
    if not items:
        raise invalid(f"'{param}' must hold at least one token id", param)
    out = []
    for j, item in enumerate(items):
        number = item.number_value if kind(item) == "number_value" else None
        if number is None or not number.is_integer() or not 0 <= number < 2**31:
            raise invalid(f"'{param}[{j}]' must be a token id (an integer, 0 or more)", f"{param}[{j}]")
        out.append(int(number))
    return tuple(out)


def tool_choice(value: struct_pb2.Value) -> tuple[str | None, str | None]:
    """(tool_choice, forced function name) from "auto" | "none" | "required" | {"type": "function", ...}."""
    k = kind(value)
    if is_absent(value):
        return None, None
    if k == "string_value":
        if value.string_value not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be auto, none, required or a function", "tool_choice")
        return value.string_value, None
    if k == "struct_value":
        function = value.struct_value.fields.get("function")
        name = function.struct_value.fields.get("name") if function is not None else None
        if name is None or kind(name) != "string_value" or not name.string_value:
            raise invalid('\'tool_choice\' objects name the function: {"function": {"name": ...}}', "tool_choice")
        return "function", name.string_value
    raise invalid("'tool_choice' must be a string or an object", "tool_choice")


def logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias map (token id as a string key -> bias in [-100, 100]), sorted by token id. Each error
    names its key (the range against the vocabulary is checked where the tokenizer is)."""
    out: list[tuple[int, float]] = []
    for key, value in sorted(bias.items()):
        param = f"logit_bias.{key}"
        try:
            token = int(key)
        except ValueError:
            raise invalid(f"logit_bias keys must be token ids, got {shown(key)}", param) from None
        if token < 0:
            raise invalid(f"logit_bias key '{token}' is negative; keys are token ids", param)
        if not -100.0 <= value <= 100.0:
            raise invalid(f"logit_bias values must be between -100 and 100, got {value} for '{key}'", param)
        out.append((token, value))
    return tuple(out)
