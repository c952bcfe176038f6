"""Protobuf messages -> the chat layer's request types (and the field checks only the wire format needs)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, struct_pb2

from chatgen.chat.types import ChatRequest, CompletionRequest, Message, Sampling, ToolCall
from chatgen.errors import invalid
from chatgen.v1 import chatgen_pb2 as pb


def _opt(msg, name: str):  # type: ignore[no-untyped-def]
    return getattr(msg, name) if msg.HasField(name) else None


def as_python(message: Any) -> dict[str, Any]:
    """A message (a Struct, or one with Struct fields) as plain OpenAI-shaped JSON data. JSON numbers arrive as
    doubles; integral ones become ints again, since JSON Schema keywords like maxItems and template code like
    range(n) need integers."""

    def fix(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(json_format.MessageToDict(message, preserving_proto_field_name=True))  # type: ignore[no-any-return]


def _default(value: int | None, fallback: int) -> int:
    return fallback if value is None else value


def _value_kind(v: struct_pb2.Value) -> str | None:
    return v.WhichOneof("kind")


def content_text(v: struct_pb2.Value, param: str) -> str:
    """OpenAI message content: a string, or an array of `{"type": "text", "text": ...}` parts (joined)."""
    kind = _value_kind(v)
    if kind is None or kind == "null_value":
        return ""
    if kind == "string_value":
        return v.string_value
    if kind == "list_value":
        texts: list[str] = []
        for i, part in enumerate(v.list_value.values):
            fields = part.struct_value.fields if part.WhichOneof("kind") == "struct_value" else None
            if fields is None or fields.get("type", struct_pb2.Value()).string_value != "text":
                raise invalid(f"{param}[{i}] must be a content part of type 'text'", f"{param}[{i}]")
            text = fields.get("text")
            if text is None or text.WhichOneof("kind") != "string_value":
                raise invalid(f"{param}[{i}].text must be a string", f"{param}[{i}].text")
            texts.append(text.string_value)
        return "".join(texts)
    raise invalid(f"{param} must be a string or an array of content parts", param)


def stop_strings(v: struct_pb2.Value) -> tuple[str, ...]:
    kind = _value_kind(v)
    if kind is None or kind == "null_value":
        return ()
    if kind == "string_value":
        return (v.string_value,) if v.string_value else ()
    if kind == "list_value":
        out: list[str] = []
        for i, item in enumerate(v.list_value.values):
            if item.WhichOneof("kind") != "string_value":
                raise invalid(f"stop[{i}] must be a string", f"stop[{i}]")
            if item.string_value:
                out.append(item.string_value)
        return tuple(out)
    raise invalid("'stop' must be a string or an array of strings", "stop")


def prompt_text(v: struct_pb2.Value) -> str:
    kind = _value_kind(v)
    if kind == "string_value":
        return v.string_value
    if kind == "list_value" and len(v.list_value.values) == 1:
        only = v.list_value.values[0]
        if only.WhichOneof("kind") == "string_value":
            return only.string_value
    if kind is None or kind == "null_value":
        raise invalid("'prompt' is required", "prompt")
    raise invalid("'prompt' must be a string (or an array holding one string)", "prompt")


def _logit_bias(req: pb.ChatCompletionRequest | pb.CompletionRequest) -> tuple[tuple[int, float], ...]:
    bias: list[tuple[int, float]] = []
    for key, value in sorted(req.logit_bias.items()):
        try:
            bias.append((int(key), value))
        except ValueError:
            raise invalid(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
    return tuple(bias)


def _chat_logprobs(req: pb.ChatCompletionRequest) -> int | None:
    top = _opt(req, "top_logprobs")
    if not _opt(req, "logprobs"):
        if top is not None:
            raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


# OpenAI's json_object mode: any JSON object.
JSON_OBJECT_SCHEMA = '{"type": "object"}'


def response_format_schema(req: pb.ChatCompletionRequest | pb.CompletionRequest) -> str | None:
    """response_format -> the JSON Schema (text) to enforce, or None for free text."""
    if not req.HasField("response_format"):
        return None
    fmt = req.response_format
    if fmt.type in ("", "text"):
        return None
    if fmt.type == "json_object":
        return JSON_OBJECT_SCHEMA
    if fmt.type != "json_schema":
        raise invalid(
            f"response_format.type must be text, json_object or json_schema, got {fmt.type!r}", "response_format.type"
        )
    if not fmt.HasField("json_schema") or not fmt.json_schema.HasField("schema"):
        raise invalid("response_format json_schema needs json_schema.schema", "response_format.json_schema.schema")
    schema = as_python(fmt.json_schema.schema)
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise invalid(f"invalid JSON schema: {exc.message}", "response_format.json_schema.schema") from None
    return json.dumps(schema)


def _sampling(
    req: pb.ChatCompletionRequest | pb.CompletionRequest, max_tokens: int | None, logprobs: int | None
) -> Sampling:
    skip = _opt(req, "skip_special_tokens")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_opt(req, "temperature"),
        top_p=_opt(req, "top_p"),
        top_k=_opt(req, "top_k"),
        min_p=_opt(req, "min_p"),
        presence_penalty=_opt(req, "presence_penalty"),
        frequency_penalty=_opt(req, "frequency_penalty"),
        repetition_penalty=_opt(req, "repetition_penalty"),
        seed=_opt(req, "seed"),
        stop=stop_strings(req.stop),
        ignore_eos=bool(_opt(req, "ignore_eos")),
        n=_default(_opt(req, "n"), 1),
        stop_token_ids=tuple(req.stop_token_ids),
        logit_bias=_logit_bias(req),
        logprobs=logprobs,
        skip_special_tokens=True if skip is None else skip,
        json_schema=response_format_schema(req),
    )


def _message(m: pb.ChatMessage, i: int) -> Message:
    return Message(
        role=m.role,
        content=content_text(m.content, f"messages[{i}].content"),
        name=_opt(m, "name"),
        tool_calls=tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls),
        tool_call_id=_opt(m, "tool_call_id"),
    )


def tool_choice(v: struct_pb2.Value) -> tuple[str | None, str | None]:
    """(tool_choice, forced function name) from "auto" | "none" | "required" | {"type": "function", ...}."""
    kind = _value_kind(v)
    if kind is None or kind == "null_value":
        return None, None
    if kind == "string_value":
        if v.string_value not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be auto, none, required or a function", "tool_choice")
        return v.string_value, None
    if kind == "struct_value":
        function = v.struct_value.fields.get("function")
        name = function.struct_value.fields.get("name") if function is not None else None
        if name is None or name.WhichOneof("kind") != "string_value":
            raise invalid('\'tool_choice\' objects name the function: {"function": {"name": ...}}', "tool_choice")
        return "function", name.string_value
    raise invalid("'tool_choice' must be a string or an object", "tool_choice")


def chat_request(req: pb.ChatCompletionRequest) -> ChatRequest:
    messages = [_message(m, i) for i, m in enumerate(req.messages)]
    choice, forced = tool_choice(req.tool_choice)
    max_tokens = _opt(req, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _opt(req, "max_tokens")
    return ChatRequest(
        model=req.model,
        messages=messages,
        sampling=_sampling(req, max_tokens, _chat_logprobs(req)),
        template_kwargs=as_python(req.chat_template_kwargs) if req.HasField("chat_template_kwargs") else {},
        enable_thinking=_opt(req, "enable_thinking"),
        request_id=_opt(req, "request_id") or None,
        tools=[as_python(t) for t in req.tools],
        tool_choice=choice,
        forced_function=forced,
        parallel_tool_calls=_opt(req, "parallel_tool_calls"),
    )


def completion_request(req: pb.CompletionRequest) -> CompletionRequest:
    return CompletionRequest(
        model=req.model,
        prompt=prompt_text(req.prompt),
        sampling=_sampling(req, _opt(req, "max_tokens"), _opt(req, "logprobs")),
        echo=bool(_opt(req, "echo")),
        request_id=_opt(req, "request_id") or None,
    )


def include_usage(req: pb.ChatCompletionRequest | pb.CompletionRequest) -> bool:
    return req.HasField("stream_options") and bool(req.stream_options.include_usage)
