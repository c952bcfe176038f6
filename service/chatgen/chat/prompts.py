"""Turn requests into prompt token ids: chat messages through the model's own chat template."""

from __future__ import annotations

import json
from typing import Any

from chatgen.chat.types import ChatRequest, Message
from chatgen.errors import ChatgenError, Failure, invalid

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


def validate_messages(messages: list[Message]) -> None:
    if not messages:
        raise invalid("'messages' must contain at least one message", "messages")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise invalid(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got {m.role!r}",
                f"messages[{i}].role",
            )


def template_variables(request: ChatRequest) -> dict[str, Any]:
    """chat_template_kwargs plus the enable_thinking shorthand, which Xinference spells both ways (Qwen templates
    read `enable_thinking`, some DeepSeek ones `thinking`); explicit chat_template_kwargs win."""
    for name in request.template_kwargs:
        if name in RESERVED_TEMPLATE_KWARGS:
            raise invalid(f"chat_template_kwargs may not set {name!r}", f"chat_template_kwargs.{name}")
    variables = dict(request.template_kwargs)
    if request.enable_thinking is not None:
        variables.setdefault("enable_thinking", request.enable_thinking)
        variables.setdefault("thinking", request.enable_thinking)
    return variables


def _template_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        # Chat templates index into the arguments (tool_call.arguments.items()), so they get a dict, as vLLM
        # passes them; text that is not JSON is passed through.
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    variables: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    validate_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ChatgenError(
            Failure.NO_CHAT_TEMPLATE,
            "this model has no chat template; use /v1/completions (Generate) instead",
            "messages",
        )
    conversation = [_template_message(m) for m in messages]
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=tools or None, tokenize=False, add_generation_prompt=True, **(variables or {})
        )
    except TemplateError as exc:
        # Templates reject what their model can't take (e.g. roles out of order) with raise_exception().
        raise invalid(f"the model's chat template rejected the messages: {exc}", "messages") from exc
    # The template already wrote any BOS/special tokens the model expects; adding them again would double them.
    return list(tokenizer.encode(text, add_special_tokens=False))


def render_completion(tokenizer: Any, prompt: str) -> list[int]:
    if not prompt:
        raise invalid("'prompt' must be a non-empty string", "prompt")
    ids = list(tokenizer.encode(prompt, add_special_tokens=True))
    if not ids:
        # Text the tokenizer drops entirely (control characters, say) leaves nothing to continue from.
        raise invalid("'prompt' has no tokens for this model (only characters its tokenizer drops)", "prompt")
    return ids
