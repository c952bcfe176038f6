"""A tokenize or detokenize request (vLLM's /tokenize, /detokenize) -> one validated plan. A conversation is
checked as chat checks its messages (validate_chat), with the template options vLLM's tokenizer endpoint takes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from chatgen.chat.validation.chat import ChatPlan, tool_definitions, validate_chat
from chatgen.chat.validation.sampling import ServedModel, check_model
from chatgen.errors import invalid
from chatgen.v1 import chatgen_pb2 as pb

# Fields that only mean something for a conversation: with a prompt they are an error, not ignored.
_CONVERSATION_ONLY = ("add_generation_prompt", "continue_final_message", "chat_template_kwargs")


@dataclass(frozen=True)
class TokenizePlan:
    # Exactly one of the two: the text of a prompt, or a conversation (with its template options).
    prompt: str | None
    chat: ChatPlan | None
    # For a prompt: the tokenizer's special tokens (default true; a conversation's plan has its own).
    add_special_tokens: bool
    return_token_strs: bool


def validate_tokenize(request: pb.TokenizeRequest, model: ServedModel) -> TokenizePlan:
    if request.HasField("model"):
        check_model(request, model)
    has_prompt, has_messages = request.HasField("prompt"), bool(request.messages)
    if has_prompt == has_messages:
        message = "send 'prompt' or 'messages'" if not has_prompt else "send 'prompt' or 'messages', not both"
        raise invalid(message, "prompt")
    if has_prompt:
        for name in _CONVERSATION_ONLY:
            if request.HasField(name):
                raise invalid(f"'{name}' applies to 'messages', not to a 'prompt'", name)
        if request.tools:
            raise invalid("'tools' applies to 'messages', not to a 'prompt'", "tools")
        return TokenizePlan(
            prompt=request.prompt,
            chat=None,
            add_special_tokens=request.add_special_tokens if request.HasField("add_special_tokens") else True,
            return_token_strs=request.return_token_strs,
        )
    # The conversation as chat would render it: the same checks, the same template options.
    chat = pb.CreateChatCompletionRequest(model=model.name, messages=request.messages)
    for name in (*_CONVERSATION_ONLY, "add_special_tokens"):
        if request.HasField(name):
            field = getattr(request, name)
            if name == "chat_template_kwargs":
                chat.chat_template_kwargs.CopyFrom(field)
            else:
                setattr(chat, name, field)
    plan = validate_chat(chat, model, streaming=False)
    return TokenizePlan(
        prompt=None,
        # Tools are shown to the template as chat shows them (no tool-call parser is needed to count them).
        chat=_with_tools(plan, tool_definitions(request.tools)),
        add_special_tokens=plan.add_special_tokens,
        return_token_strs=request.return_token_strs,
    )


def _with_tools(plan: ChatPlan, tools: tuple[dict[str, Any], ...]) -> ChatPlan:
    return replace(plan, tools=tools) if tools else plan


def validate_detokenize(request: pb.DetokenizeRequest, model: ServedModel) -> list[int]:
    """The token ids (their range against the vocabulary is checked where the tokenizer is)."""
    if request.HasField("model"):
        check_model(request, model)
    for j, token in enumerate(request.tokens):
        if token < 0:
            raise invalid(f"'tokens[{j}]' must be a token id (0 or more), got {token}", f"tokens[{j}]")
    return list(request.tokens)
