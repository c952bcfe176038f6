"""An Anthropic Messages request -> the chat request it asks for, as vLLM's Anthropic endpoint serves it: the
system prompt and the turns become chat messages (tool_use blocks an assistant turn's tool calls, tool_result
blocks tool messages), the tools function tools, `thinking` the template's thinking switch. The Messages API's own
rules (its roles, block types, `max_tokens` required, temperature 0..1) are checked here; everything else is the
chat request's validation (validate_chat), whose errors `MessagesTranslation.renamed` names by the Messages
request's fields."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from chatgen.chat.validation import values
from chatgen.chat.validation.renaming import renamed
from chatgen.errors import ApiError, invalid, shown, unsupported
from chatgen.v1 import chatgen_pb2 as pb

ROLES = ("user", "assistant")
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# Chat request fields -> the Messages request's (their sub-paths kept).
_RENAMED = (
    (re.compile(r"^stop\b"), "stop_sequences"),
    (re.compile(r"^tools\[(\d+)\]\.function\.parameters"), r"tools[\1].input_schema"),
    (re.compile(r"^tools\[(\d+)\]\.function(\.name)?"), r"tools[\1].name"),
    (re.compile(r"^tools\[(\d+)\]$"), r"tools[\1]"),
    (re.compile(r"^parallel_tool_calls$"), "tool_choice.disable_parallel_tool_use"),
    (re.compile(r"^tool_choice\b.*"), "tool_choice"),
    (re.compile(r"^(enable_thinking|chat_template_kwargs)\b.*"), "thinking"),
    (re.compile(r"^max_completion_tokens$"), "max_tokens"),
)


@dataclass(frozen=True)
class MessagesTranslation:
    """The chat request a Messages request stands for, and where each of its messages came from."""

    chat: pb.CreateChatCompletionRequest
    # Per chat message: the Messages request's field it came from ("system", "messages[2]").
    origins: tuple[str, ...]

    def renamed(self, err: ApiError) -> ApiError:
        """The chat validation's error, naming the Messages request's field instead of the chat request's."""
        return renamed(err, self.origins, _RENAMED, "messages")


def translate(request: pb.CreateMessageRequest, streaming: bool) -> MessagesTranslation:
    """A CreateMessageRequest -> its chat request, for a unary or a streaming call."""
    if not request.HasField("max_tokens"):
        raise invalid("Field required", "max_tokens")
    if request.HasField("temperature") and not 0 <= request.temperature <= 1:
        raise invalid(f"temperature must be between 0 and 1, got {request.temperature:g}", "temperature")
    translation = _prompt(request)
    chat = translation.chat
    chat.max_tokens = request.max_tokens
    if request.HasField("stream"):
        chat.stream = request.stream
    if streaming:
        # The usage at the end is the message_delta's.
        chat.stream_options.include_usage = True
    for name in ("temperature", "top_p", "top_k"):
        if request.HasField(name):
            setattr(chat, name, getattr(request, name))
    if request.stop_sequences:
        chat.stop.list_value.values.extend(struct_pb2.Value(string_value=s) for s in request.stop_sequences)
    _thinking(request, chat)
    if request.metadata.HasField("user_id"):
        chat.user = request.metadata.user_id
    return translation


def translate_count(request: pb.CountMessageTokensRequest) -> MessagesTranslation:
    """A CountMessageTokensRequest -> the chat request whose prompt it counts."""
    translation = _prompt(request)
    _thinking(request, translation.chat)
    return translation


def _prompt(request: pb.CreateMessageRequest | pb.CountMessageTokensRequest) -> MessagesTranslation:
    chat = pb.CreateChatCompletionRequest(model=request.model)
    origins: list[str] = []
    if not values.is_absent(request.system) and values.kind(request.system) != "null_value":
        chat.messages.add(role="system", content=struct_pb2.Value(string_value=_system(request.system)))
        origins.append("system")
    if not request.messages:
        raise invalid("at least one message is required", "messages")
    for i, message in enumerate(request.messages):
        for out in _turn(message, f"messages[{i}]"):
            chat.messages.append(out)
            origins.append(f"messages[{i}]")
    for i, tool in enumerate(request.tools):
        chat.tools.append(_tool(tool, f"tools[{i}]"))
    if request.HasField("tool_choice"):
        _tool_choice(request.tool_choice, chat)
    return MessagesTranslation(chat, tuple(origins))


def _system(value: struct_pb2.Value) -> str:
    """`system`: a string, or an array of text blocks (joined by newlines)."""
    if values.kind(value) == "string_value":
        return value.string_value
    if values.kind(value) != "list_value":
        raise invalid("system must be a string or an array of text blocks", "system")
    return "\n".join(_text_block(b, f"system[{j}]") for j, b in enumerate(value.list_value.values))


def _blocks(value: struct_pb2.Value, where: str) -> list[dict[str, Any]]:
    """A turn's content as blocks (a string is one text block)."""
    kind = values.kind(value)
    if kind == "string_value":
        return [{"type": "text", "text": value.string_value}]
    if kind != "list_value":
        raise invalid("content must be a string or an array of content blocks", f"{where}.content")
    blocks = []
    for j, item in enumerate(value.list_value.values):
        block = _as_block(item)
        if block is None or not isinstance(block.get("type"), str):
            raise invalid("each content block must be an object with a 'type'", f"{where}.content[{j}]")
        blocks.append(block)
    return blocks


def _as_block(item: struct_pb2.Value) -> dict[str, Any] | None:
    """A content block as JSON data (whole numbers as ints, as the caller wrote them), or None if not an object."""
    return values.as_python(item.struct_value) if values.kind(item) == "struct_value" else None  # type: ignore[no-any-return]


def _text_block(item: struct_pb2.Value, where: str) -> str:
    block = _as_block(item)
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise invalid("expected a text block, {'type': 'text', 'text': ...}", where)
    return str(block["text"])


def _turn(message: pb.InputMessage, where: str) -> list[pb.ChatMessage]:
    """One Messages turn -> its chat messages: a user turn's tool results come first, as tool messages."""
    if message.role not in ROLES:
        raise invalid(f"role must be 'user' or 'assistant', got {shown(message.role)}", f"{where}.role")
    if values.is_absent(message.content):
        raise invalid("Field required", f"{where}.content")
    texts: list[str] = []
    out: list[pb.ChatMessage] = []
    calls: list[pb.ToolCall] = []
    for j, block in enumerate(_blocks(message.content, where)):
        at = f"{where}.content[{j}]"
        kind = block["type"]
        allowed = {"text", "tool_use", "thinking", "redacted_thinking"} if message.role == "assistant" else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result" and message.role == "user":
            out.append(_tool_result(block, at))
        elif kind == "tool_use" and message.role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
            # Earlier turns' thinking is not shown to the model again, as Anthropic's API drops it too.
            continue
        elif kind in ("image", "document", "search_result", "server_tool_use", "web_search_tool_result"):
            raise unsupported(f"content blocks of type {shown(kind)} are not served (text-only models)", at)
        elif kind == "text":
            raise invalid("a text block needs 'text', a string", f"{at}.text")
        else:
            names = "text, tool_use, thinking" if allowed else "text, tool_result"
            raise invalid(f"a {message.role} turn's blocks are {names}; got {shown(kind)}", f"{at}.type")
    if texts or calls or not out:
        turn = pb.ChatMessage(role=message.role, content=struct_pb2.Value(string_value="\n".join(texts)))
        turn.tool_calls.extend(calls)
        out.append(turn)
    return out


def _tool_use(block: dict[str, Any], at: str) -> pb.ToolCall:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise invalid(f"a tool_use block needs '{name}', a string", f"{at}.{name}")
    if not isinstance(block.get("input"), dict):
        raise invalid("a tool_use block needs 'input', an object", f"{at}.input")
    arguments = json.dumps(block["input"], ensure_ascii=False)
    return pb.ToolCall(
        id=block["id"], type="function", function=pb.FunctionCall(name=block["name"], arguments=arguments)
    )


def _tool_result(block: dict[str, Any], at: str) -> pb.ChatMessage:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid("a tool_result block needs 'tool_use_id', a string", f"{at}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("a tool result's content blocks must be text blocks", f"{at}.content[{k}]")
            parts.append(part["text"])
        content = "\n".join(parts)
    elif not isinstance(content, str):
        raise invalid("a tool result's content must be a string or text blocks", f"{at}.content")
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise invalid("is_error must be a boolean", f"{at}.is_error")
    if is_error:
        # The chat template has no place for the flag: the model reads it in the result.
        content = f"Error: {content}"
    return pb.ChatMessage(role="tool", content=struct_pb2.Value(string_value=content), tool_call_id=call_id)


def _tool(tool: pb.MessageTool, where: str) -> pb.Tool:
    if tool.HasField("type") and tool.type != "custom":
        raise unsupported(f"server tools ({shown(tool.type)}) are not served; only client tools are", f"{where}.type")
    if not tool.name:
        raise invalid("Field required", f"{where}.name")
    if not tool.HasField("input_schema"):
        raise invalid("Field required", f"{where}.input_schema")
    function = pb.FunctionDefinition(name=tool.name, parameters=tool.input_schema)
    if tool.HasField("description"):
        function.description = tool.description
    return pb.Tool(type="function", function=function)


def _tool_choice(choice: pb.MessageToolChoice, chat: pb.CreateChatCompletionRequest) -> None:
    if choice.type == "tool":
        if not choice.name:
            raise invalid("tool_choice of type 'tool' needs 'name'", "tool_choice.name")
        chat.tool_choice.struct_value.update({"type": "function", "function": {"name": choice.name}})
    elif choice.type in TOOL_CHOICES:
        chat.tool_choice.string_value = TOOL_CHOICES[choice.type]
    else:
        raise invalid(f"tool_choice.type must be auto, any, tool or none, got {shown(choice.type)}", "tool_choice.type")
    if choice.disable_parallel_tool_use:
        chat.parallel_tool_calls = False


def _thinking(request: pb.CreateMessageRequest | pb.CountMessageTokensRequest, chat: Any) -> None:
    if not request.HasField("thinking"):
        return
    thinking = request.thinking
    if thinking.type == "disabled":
        chat.enable_thinking = False
        return
    if thinking.type != "enabled":
        raise invalid(f"thinking.type must be enabled or disabled, got {shown(thinking.type)}", "thinking.type")
    if not thinking.HasField("budget_tokens") or thinking.budget_tokens < 1:
        raise invalid("thinking.budget_tokens is required with thinking enabled, at least 1", "thinking.budget_tokens")
    if isinstance(request, pb.CreateMessageRequest) and thinking.budget_tokens >= request.max_tokens:
        raise invalid("thinking.budget_tokens must be less than max_tokens", "thinking.budget_tokens")
    chat.enable_thinking = True
