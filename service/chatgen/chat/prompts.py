"""Turn requests into prompt token ids: chat messages through the model's own chat template."""

from __future__ import annotations

import json
from typing import Any

from chatgen.chat.types import Message
from chatgen.chat.validation import ChatPlan
from chatgen.errors import invalid


def _template_message(m: Message) -> dict[str, Any]:
    out = m.openai_dict()
    for call in out.get("tool_calls", ()):
        # Chat templates index into the arguments (tool_call.arguments.items()), so they get data, as vLLM
        # passes them; text that is not JSON is passed through.
        call["function"]["arguments"] = _arguments(call["function"]["arguments"])
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def render_chat(tokenizer: Any, plan: ChatPlan) -> list[int]:
    """The plan's messages through the model's chat template, tokenized, as the plan says: with or without the
    generation prompt, the last message left open or not, the tokenizer's special tokens added or not."""
    conversation = [_template_message(m) for m in plan.messages]
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            conversation,
            tools=plan.template_tools,
            tokenize=False,
            add_generation_prompt=plan.add_generation_prompt,
            continue_final_message=plan.continue_final_message,
            **plan.template_variables,
        )
    except TemplateError as exc:
        # Templates reject what their model can't take (e.g. roles out of order) with raise_exception().
        raise invalid(f"the model's chat template rejected the messages: {exc}", "messages") from exc
    # The template already wrote any BOS/special tokens the model expects; adding them again would double them.
    return list(tokenizer.encode(text, add_special_tokens=plan.add_special_tokens))


def render_completion(tokenizer: Any, prompt: str, param: str = "prompt", add_special_tokens: bool = True) -> list[int]:
    ids = list(tokenizer.encode(prompt, add_special_tokens=add_special_tokens))
    if not ids:
        # Text the tokenizer drops entirely (control characters, say) leaves nothing to continue from.
        raise invalid(f"'{param}' has no tokens for this model (only characters its tokenizer drops)", param)
    return ids
