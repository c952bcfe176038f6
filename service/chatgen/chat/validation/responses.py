"""A Responses API request -> the chat request it asks for (as vLLM's Responses endpoint serves it): the
conversation so far (a stored response's items, then `input`) becomes chat messages — function_call items an
assistant turn's tool calls, function_call_output items tool messages — `instructions` the system message,
`text.format` the response_format, `reasoning.effort` the thinking switch. The Responses API's own rules are
checked here; the rest is validate_chat's, whose errors `ResponsesTranslation.renamed` names by the Responses
request's fields. The input items come back normalized (string content as input_text parts, every item with an
id), as the store keeps them and `input_items` lists them."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from chatgen.chat.validation import values
from chatgen.chat.validation.renaming import renamed
from chatgen.errors import ApiError, invalid, shown, unsupported
from chatgen.v1 import chatgen_pb2 as pb

ROLES = ("user", "assistant", "system", "developer")
EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
SUMMARIES = ("auto", "concise", "detailed")
MAX_METADATA = 16
# `include` values with nothing to add here: nothing is encrypted (reasoning items carry their text) and the
# hosted tools whose results they name are not served.
INCLUDES_WITHOUT_WORK = (
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
)
_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}
_RENAMED = (
    (re.compile(r"^max_tokens$"), "max_output_tokens"),
    (re.compile(r"^tools\[(\d+)\]\.function\.parameters"), r"tools[\1].parameters"),
    (re.compile(r"^tools\[(\d+)\]\.function(\.name)?"), r"tools[\1].name"),
    (re.compile(r"^tool_choice\b.*"), "tool_choice"),
    (re.compile(r"^response_format\.json_schema\.schema"), "text.format.schema"),
    (re.compile(r"^response_format\b.*"), "text.format"),
    (re.compile(r"^(enable_thinking|chat_template_kwargs)\b.*"), "reasoning"),
)


def item_id(kind: str) -> str:
    return _PREFIXES.get(kind, "item_") + uuid.uuid4().hex


@dataclass(frozen=True)
class ResponsesTranslation:
    chat: pb.CreateChatCompletionRequest
    # The conversation's items as stored: the earlier ones (previous_response_id), then this request's input.
    items: tuple[dict[str, Any], ...]
    # Per chat message: the Responses request's field it came from ("instructions", "input[2]", "previous_response_id").
    origins: tuple[str, ...]

    def renamed(self, err: ApiError) -> ApiError:
        """The chat validation's error, naming the Responses request's field instead of the chat request's."""
        return renamed(err, self.origins, _RENAMED, "input")


def translate(
    request: pb.CreateResponseRequest, earlier: list[dict[str, Any]], streaming: bool
) -> ResponsesTranslation:
    """`earlier`: the stored conversation that previous_response_id continues (its input and output items)."""
    _check_metadata(request)
    _check_unserved(request)
    chat = pb.CreateChatCompletionRequest(model=request.model)
    origins: list[str] = []
    if request.HasField("instructions"):
        chat.messages.add(role="system", content=struct_pb2.Value(string_value=request.instructions))
        origins.append("instructions")
    new = _input_items(request.input)
    for where, items in (("previous_response_id", earlier), ("input", new)):
        for k, message in _messages(items, where):
            chat.messages.append(message)
            origins.append(where if where != "input" else f"input[{k}]")
    if request.HasField("max_output_tokens"):
        chat.max_tokens = request.max_output_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls", "stream"):
        if request.HasField(name):
            setattr(chat, name, getattr(request, name))
    if streaming:
        chat.stream_options.include_usage = True
    for i, tool in enumerate(request.tools):
        chat.tools.append(_tool(tool, f"tools[{i}]"))
    _tool_choice(request.tool_choice, chat)
    _text_format(request, chat)
    _reasoning(request, chat)
    return ResponsesTranslation(chat, (*earlier, *new), tuple(origins))


def _check_metadata(request: pb.CreateResponseRequest) -> None:
    if len(request.metadata) > MAX_METADATA:
        raise invalid(f"metadata may hold at most {MAX_METADATA} keys, got {len(request.metadata)}", "metadata")
    for key, value in request.metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise invalid("metadata keys are at most 64 characters, values at most 512", f"metadata.{key[:64]}")


def _check_unserved(request: pb.CreateResponseRequest) -> None:
    """Fields whose meaning the server cannot give: answered unsupported_parameter instead of being ignored."""
    why = {
        "background": "background responses are not served; the call waits for the response",
        "conversation": "conversations are not served; continue one with previous_response_id",
        "prompt": "stored prompt templates are not served; send instructions and input",
        "max_tool_calls": "max_tool_calls is not served",
    }
    for name, message in why.items():
        if request.HasField(name) and (name != "background" or request.background):
            raise unsupported(message, name)
    if request.HasField("truncation") and request.truncation != "disabled":
        if request.truncation == "auto":
            raise unsupported("truncation 'auto' is not served: a conversation is never cut", "truncation")
        raise invalid(f"truncation must be disabled or auto, got {shown(request.truncation)}", "truncation")
    if request.top_logprobs:
        message = "top_logprobs is not served on /v1/responses; chat completions serve logprobs"
        raise unsupported(message, "top_logprobs")
    for value in request.include:
        if value == "message.output_text.logprobs":
            raise unsupported("logprobs are not served on /v1/responses; chat completions serve them", "include")
        if value not in INCLUDES_WITHOUT_WORK:
            raise invalid(f"unknown include value {shown(value)}", "include")


def _input_items(value: struct_pb2.Value) -> list[dict[str, Any]]:
    """`input` as normalized items."""
    kind = values.kind(value)
    if kind == "string_value":
        return [_message_item("user", value.string_value, None)]
    if kind != "list_value":
        raise invalid("input is required: a string or a list of items", "input")
    if not value.list_value.values:
        raise invalid("input must hold at least one item", "input")
    items = []
    for k, entry in enumerate(value.list_value.values):
        if values.kind(entry) != "struct_value":
            raise invalid("each input item must be an object", f"input[{k}]")
        items.append(_item(values.as_python(entry.struct_value), f"input[{k}]"))
    return items


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid("expected a string", where)
    return value


def _message_item(role: str, content: Any, given_id: Any) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        content = [{"type": part, "text": content, **({"annotations": []} if role == "assistant" else {})}]
    return {"type": "message", "id": given_id or item_id("message"), "role": role, "content": content}


def _item(item: dict[str, Any], where: str) -> dict[str, Any]:
    """One input item, checked and normalized."""
    kind = item.get("type", "message")
    given_id = item.get("id")
    if given_id is not None and not isinstance(given_id, str):
        raise invalid("an item's id must be a string", f"{where}.id")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise invalid(f"role must be one of {', '.join(ROLES)}, got {shown(role)}", f"{where}.role")
        content = item.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _part(part, f"{where}.content[{j}]")
        elif not isinstance(content, str):
            raise invalid("content must be a string or a list of content parts", f"{where}.content")
        return _message_item(role, content, given_id)
    if kind == "function_call":
        fields = {name: _text(item.get(name), f"{where}.{name}") for name in ("call_id", "name", "arguments")}
        return {"type": kind, "id": given_id or item_id(kind), **fields, "status": "completed"}
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(_part(p, f"{where}.output[{j}]") for j, p in enumerate(output))
        call_id = _text(item.get("call_id"), f"{where}.call_id")
        return {
            "type": kind,
            "id": given_id or item_id(kind),
            "call_id": call_id,
            "output": _text(output, f"{where}.output"),
        }
    if kind == "reasoning":
        return {
            "type": kind,
            "id": given_id or item_id(kind),
            "summary": item.get("summary") or [],
            "content": item.get("content") or [],
        }
    if kind in ("item_reference", "input_image", "input_file", "computer_call", "web_search_call", "file_search_call"):
        raise unsupported(f"input items of type {shown(kind)} are not served", f"{where}.type")
    raise invalid(f"unknown input item type {shown(kind)}", f"{where}.type")


def _part(part: Any, where: str) -> str:
    """A content part's text: input_text, output_text (assistant history) or refusal."""
    if not isinstance(part, dict):
        raise invalid("a content part must be an object", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return _text(part.get("text"), f"{where}.text")
    if kind == "refusal":
        return _text(part.get("refusal"), f"{where}.refusal")
    if kind in ("input_image", "input_file", "input_audio"):
        raise unsupported(f"content parts of type {shown(kind)} are not served (text-only models)", f"{where}.type")
    raise invalid(f"unknown content part type {shown(kind)}", f"{where}.type")


def _messages(items: list[dict[str, Any]], where: str) -> list[tuple[int, pb.ChatMessage]]:
    """Items -> chat messages (with each one's item index): consecutive function calls join the assistant turn
    before them; reasoning items are not shown to the model again."""
    out: list[tuple[int, pb.ChatMessage]] = []
    for k, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            text = "".join(_part(p, f"{where}[{k}].content") for p in item["content"])
            out.append((k, pb.ChatMessage(role=item["role"], content=struct_pb2.Value(string_value=text))))
        elif kind == "function_call":
            call = pb.ToolCall(id=item["call_id"], type="function")
            call.function.name, call.function.arguments = item["name"], item["arguments"]
            if not out or out[-1][1].role != "assistant":
                out.append((k, pb.ChatMessage(role="assistant")))
            out[-1][1].tool_calls.append(call)
        elif kind == "function_call_output":
            message = pb.ChatMessage(role="tool", tool_call_id=item["call_id"])
            message.content.string_value = item["output"]
            out.append((k, message))
    return out


def _tool(tool: pb.ResponseTool, where: str) -> pb.Tool:
    if tool.type != "function":
        raise unsupported(f"tools of type {shown(tool.type)} are not served; only function tools are", f"{where}.type")
    if not tool.name:
        raise invalid("a function tool needs 'name'", f"{where}.name")
    function = pb.FunctionDefinition(name=tool.name)
    if tool.HasField("parameters"):
        function.parameters.CopyFrom(tool.parameters)
    if tool.HasField("description"):
        function.description = tool.description
    return pb.Tool(type="function", function=function)


def _tool_choice(value: struct_pb2.Value, chat: pb.CreateChatCompletionRequest) -> None:
    kind = values.kind(value)
    if kind is None or kind == "null_value":
        return
    if kind == "string_value":
        chat.tool_choice.string_value = value.string_value  # validate_chat checks the word
        return
    choice = values.as_python(value.struct_value) if kind == "struct_value" else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise invalid("tool_choice must be auto, none, required or {'type': 'function', 'name': ...}", "tool_choice")
    chat.tool_choice.struct_value.update({"type": "function", "function": {"name": choice["name"]}})


def _text_format(request: pb.CreateResponseRequest, chat: pb.CreateChatCompletionRequest) -> None:
    if not request.text.HasField("format"):
        return
    fmt = request.text.format
    if fmt.type == "json_schema":
        if not fmt.HasField("schema"):
            raise invalid("a json_schema format needs 'schema'", "text.format.schema")
        schema = pb.JsonSchemaFormat(name=fmt.name, schema=fmt.schema)
        if fmt.HasField("description"):
            schema.description = fmt.description
        chat.response_format.CopyFrom(pb.ResponseFormat(type="json_schema", json_schema=schema))
    elif fmt.type in ("text", "json_object"):
        chat.response_format.type = fmt.type
    else:
        raise invalid(
            f"text.format.type must be text, json_object or json_schema, got {shown(fmt.type)}", "text.format.type"
        )


def _reasoning(request: pb.CreateResponseRequest, chat: pb.CreateChatCompletionRequest) -> None:
    _effort(request, chat)
    if not request.HasField("enable_thinking"):
        return
    if chat.HasField("enable_thinking") and chat.enable_thinking != request.enable_thinking:
        raise invalid("enable_thinking and reasoning.effort disagree; send one of them", "enable_thinking")
    chat.enable_thinking = request.enable_thinking


def _effort(request: pb.CreateResponseRequest, chat: pb.CreateChatCompletionRequest) -> None:
    if not request.HasField("reasoning"):
        return
    reasoning = request.reasoning
    if reasoning.HasField("summary") and reasoning.summary not in SUMMARIES:
        raise invalid(f"reasoning.summary must be one of {', '.join(SUMMARIES)}", "reasoning.summary")
    if not reasoning.HasField("effort"):
        return
    if reasoning.effort == "none":
        chat.enable_thinking = False
    elif reasoning.effort in EFFORTS:
        chat.enable_thinking = True
    else:
        raise invalid(f"reasoning.effort must be none or one of {', '.join(EFFORTS)}", "reasoning.effort")


def conversation(items_json: str, response: pb.Response) -> list[dict[str, Any]]:
    """A stored response's whole conversation: its input items, then its output items."""
    earlier: list[dict[str, Any]] = json.loads(items_json)
    output = [values.as_python(item) for item in response.output]
    return [*earlier, *output]


def as_item_messages(items: list[dict[str, Any]]) -> list[pb.ResponseItem]:
    """Normalized items as ResponseItem messages (for input_items)."""
    return [json_format.ParseDict(item, pb.ResponseItem()) for item in items]
