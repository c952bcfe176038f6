"""A chat completion request -> one validated `ChatPlan`: every check a chat request gets that does not need the
model's tokenizer (context length and token ids are checked where the prompt is tokenized). Nothing downstream
checks the request again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatgen.chat.forced_tools import ForcedTools
from chatgen.chat.types import Message, ToolCall
from chatgen.chat.validation import structured, text, values
from chatgen.chat.validation.sampling import (
    ReplyExtras,
    SamplingPlan,
    ServedModel,
    check_logprobs,
    check_model,
    check_stream_options,
    continuous_usage,
    reply_extras,
    sampling_plan,
)
from chatgen.chat.validation.tools import forced_tools
from chatgen.errors import ApiError, Failure, invalid, shown, unsupported
from chatgen.v1 import chatgen_pb2 as pb

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# apply_chat_template's own arguments: a template variable must not be able to change how we call it.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


@dataclass(frozen=True)
class ChatPlan:
    """A chat request as the chat layer runs it."""

    model: str
    messages: tuple[Message, ...]
    sampling: SamplingPlan
    # The chat template's variables: chat_template_kwargs plus the enable_thinking switch.
    template_variables: dict[str, Any]
    # OpenAI tool definitions as JSON data, for the chat template and the tool-call parser.
    tools: tuple[dict[str, Any], ...]
    # "auto", "none", "required", "function" (the forced function's name in `forced`), or None (not sent).
    tool_choice: str | None
    # tool_choice "required" or a named function: the schema the call is decoded under.
    forced: ForcedTools | None
    # parallel_tool_calls false: at most one call per turn.
    max_tool_calls: int | None
    request_id: str | None
    include_usage: bool
    # stream_options.continuous_usage_stats: each delta carries the usage so far.
    continuous_usage: bool = False
    # What vLLM's extensions add to the reply (token ids, prompt logprobs).
    extras: ReplyExtras = field(default_factory=ReplyExtras)
    # How the template renders the conversation (vLLM's add_generation_prompt, continue_final_message) and
    # whether the tokenizer adds its special tokens on top.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    # vLLM's echo: the text the reply's content starts with (the last message's, when it is the assistant's).
    echo: str = ""

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools the chat template shows the model (none when tool_choice is "none")."""
        return list(self.tools) if self.tools and self.tool_choice != "none" else None

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the model's output is searched for tool calls (tools offered, the choice left to it)."""
        return _model_picks_tools(self.tools, self.tool_choice)


def _model_picks_tools(tools: tuple[dict[str, Any], ...], choice: str | None) -> bool:
    """Tools are offered and the choice left to the model: its output is then searched for calls."""
    return bool(tools) and choice in (None, "auto")


def validate_chat(request: pb.CreateChatCompletionRequest, model: ServedModel, streaming: bool) -> ChatPlan:
    text.check_strings(request)
    check_model(request, model)
    if not model.chat_template:
        raise ApiError(
            Failure.NO_CHAT_TEMPLATE,
            "this model has no chat template; use /v1/completions (Generate) instead",
            "messages",
        )
    messages = tuple(_message(m, i) for i, m in enumerate(request.messages))
    if not messages:
        raise invalid("'messages' must contain at least one message", "messages")
    tools = tool_definitions(request.tools)
    choice, function = values.tool_choice(request.tool_choice)
    if _model_picks_tools(tools, choice) and not model.tool_parser:
        # As vLLM: without a parser the model's calls would come back as unparsed text.
        raise unsupported(
            "this server has no tool-call parser for the model (start it with --tool-call-parser)", "tools"
        )
    forced = forced_tools(tools, choice, function, request.parallel_tool_calls is False)
    grammar = structured.constraint(request)
    if forced is not None:
        if grammar is not None:
            given = "structured_outputs" if request.HasField("structured_outputs") else "response_format"
            raise unsupported(f"a forced tool_choice cannot be combined with {given}", given)
        grammar = forced.grammar
    max_tokens = request.max_completion_tokens if request.HasField("max_completion_tokens") else None
    if max_tokens is None and request.HasField("max_tokens"):
        max_tokens = request.max_tokens
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    return ChatPlan(
        model=request.model,
        messages=messages,
        sampling=sampling_plan(request, model, max_tokens, _logprobs(request, model), grammar),
        template_variables=_template_variables(request),
        tools=tools,
        tool_choice=choice,
        forced=forced,
        max_tool_calls=1 if parallel is False else None,
        request_id=text.request_id(request.request_id),
        include_usage=check_stream_options(request, streaming),
        continuous_usage=continuous_usage(request, streaming),
        extras=reply_extras(request, streaming),
        add_generation_prompt=_generation_prompt(request, messages),
        continue_final_message=request.continue_final_message,
        add_special_tokens=request.add_special_tokens,
        echo=messages[-1].content if request.echo and messages[-1].role == "assistant" else "",
    )


def _generation_prompt(request: pb.CreateChatCompletionRequest, messages: tuple[Message, ...]) -> bool:
    """add_generation_prompt (default true), off with continue_final_message, which needs an assistant message
    last to continue."""
    if not request.continue_final_message:
        return request.add_generation_prompt if request.HasField("add_generation_prompt") else True
    if request.HasField("add_generation_prompt") and request.add_generation_prompt:
        raise invalid("continue_final_message and add_generation_prompt cannot both be true", "continue_final_message")
    if messages[-1].role != "assistant":
        raise invalid("continue_final_message needs an assistant message last", "continue_final_message")
    return False


def _message(m: pb.ChatMessage, i: int) -> Message:
    where = f"messages[{i}]"
    if m.role not in ROLES:
        raise invalid(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {shown(m.role)}", f"{where}.role")
    if m.tool_calls and m.role != "assistant":
        raise invalid(f"{where}.tool_calls: only assistant messages carry tool calls", f"{where}.tool_calls")
    calls = tuple(_history_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(m.tool_calls))
    if values.is_absent(m.content):
        # OpenAI: content is required, except on an assistant turn that only called tools.
        if not calls:
            raise invalid(f"{where}.content is required", f"{where}.content")
        content = ""
    else:
        content = values.content_text(m.content, f"{where}.content")
    if m.role == "tool" and not m.tool_call_id:
        raise invalid(f"{where}.tool_call_id is required on tool messages", f"{where}.tool_call_id")
    return Message(
        role=m.role,
        content=content,
        name=m.name if m.HasField("name") else None,
        tool_calls=calls,
        tool_call_id=m.tool_call_id if m.HasField("tool_call_id") else None,
        reasoning=_history_reasoning(m, where),
    )


def _history_reasoning(m: pb.ChatMessage, where: str) -> str | None:
    """An assistant turn's reasoning, under either name (Xinference's reasoning_content, vLLM's reasoning)."""
    given = {name: getattr(m, name) for name in ("reasoning_content", "reasoning") if m.HasField(name)}
    if not given:
        return None
    if m.role != "assistant":
        name = next(iter(given))
        raise invalid(f"{where}.{name}: only assistant messages carry reasoning", f"{where}.{name}")
    if len(set(given.values())) > 1:
        message = f"{where}.reasoning and {where}.reasoning_content differ; send one, or both the same"
        raise invalid(message, f"{where}.reasoning")
    return next(iter(given.values()))


def _history_call(call: pb.ToolCall, where: str) -> ToolCall:
    if call.type and call.type != "function":
        raise invalid(f"{where}.type must be 'function'", f"{where}.type")
    if not call.function.name:
        raise invalid(f"{where}.function.name is required", f"{where}.function.name")
    return ToolCall(call.id, call.function.name, call.function.arguments)


def tool_definitions(tools: Any) -> tuple[dict[str, Any], ...]:
    """Tools (repeated pb.Tool) as the chat template and the tool-call parser read them."""
    return tuple(_tool(t, i) for i, t in enumerate(tools))


def _tool(tool: pb.Tool, i: int) -> dict[str, Any]:
    if tool.type != "function" or not tool.function.name:
        raise invalid("each tool needs type 'function' and function.name", f"tools[{i}]")
    return values.as_python(tool)  # type: ignore[no-any-return]


def _logprobs(request: pb.CreateChatCompletionRequest, model: ServedModel) -> int | None:
    top = request.top_logprobs if request.HasField("top_logprobs") else None
    if not request.logprobs:
        if top is not None:
            raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return check_logprobs(top or 0, model, "top_logprobs")


def _template_variables(request: pb.CreateChatCompletionRequest) -> dict[str, Any]:
    """chat_template_kwargs plus the enable_thinking shorthand, which Xinference spells both ways (Qwen templates
    read `enable_thinking`, some DeepSeek ones `thinking`); explicit chat_template_kwargs win."""
    variables: dict[str, Any] = (
        values.as_python(request.chat_template_kwargs) if request.HasField("chat_template_kwargs") else {}
    )
    for name in variables:
        if name in RESERVED_TEMPLATE_KWARGS:
            raise invalid(f"chat_template_kwargs may not set {shown(name)}", f"chat_template_kwargs.{name}")
    if request.HasField("enable_thinking"):
        variables.setdefault("enable_thinking", request.enable_thinking)
        variables.setdefault("thinking", request.enable_thinking)
    return variables
