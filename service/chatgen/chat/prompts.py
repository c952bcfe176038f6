"""Turn requests into prompt token ids: chat messages through the model's own chat template."""

from __future__ import annotations

from typing import Any

from chatgen.chat.types import Message
from chatgen.errors import ChatgenError, Failure, invalid

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def validate_messages(messages: list[Message]) -> None:
    if not messages:
        raise invalid("'messages' must contain at least one message", "messages")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise invalid(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got {m.role!r}",
                f"messages[{i}].role",
            )


def render_chat(tokenizer: Any, messages: list[Message]) -> list[int]:
    validate_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ChatgenError(
            Failure.NO_CHAT_TEMPLATE,
            "this model has no chat template; use /v1/completions (Generate) instead",
            "messages",
        )
    conversation = [
        {"role": m.role, "content": m.content, **({"name": m.name} if m.name is not None else {})} for m in messages
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    # The template already wrote any BOS/special tokens the model expects; adding them again would double them.
    return list(tokenizer.encode(text, add_special_tokens=False))


def render_completion(tokenizer: Any, prompt: str) -> list[int]:
    if not prompt:
        raise invalid("'prompt' must be a non-empty string", "prompt")
    return list(tokenizer.encode(prompt, add_special_tokens=True))
