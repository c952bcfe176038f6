"""Reasoning (and, later, tool-call) extraction from model output, with vLLM's own parsers.

vLLM's parsers are written against its OpenAI protocol objects, so each chat request is mirrored into a vLLM
`ChatCompletionRequest` for them. A per-request `OutputParser` turns raw engine text into reasoning and content,
incrementally for streams (`delta`) and in one go for unary calls (`final`), exactly as vLLM's server does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatgen.chat.types import ChatRequest


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    content: str


def load_parser_class(reasoning_parser: str | None, tokenizer: Any) -> type | None:
    """The vLLM Parser class for the configured parser names (None when none is configured)."""
    if not reasoning_parser:
        return None
    from vllm.parser import ParserManager

    return ParserManager.get_parser(reasoning_parser_name=reasoning_parser, tokenizer=tokenizer)


class OutputParser:
    def __init__(
        self,
        parser_cls: type,
        tokenizer: Any,
        request: ChatRequest,
        template_kwargs: dict[str, Any],
        prompt_token_ids: list[int],
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        self._request = ChatCompletionRequest(
            model=request.model,
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            chat_template_kwargs=template_kwargs,
        )
        self._parser = parser_cls(tokenizer, None, chat_template_kwargs=template_kwargs)
        self._parser.set_prompt_token_ids(prompt_token_ids)
        self._prompt_token_ids = prompt_token_ids

    def delta(self, text: str, token_ids: Sequence[int], finished: bool) -> Parsed:
        msg = self._parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self._request,
            prompt_token_ids=self._prompt_token_ids,
            finished=finished,
        )
        if msg is None:
            return Parsed("", "")
        return Parsed(reasoning=msg.reasoning or "", content=msg.content or "")

    def final(self, text: str, token_ids: Sequence[int]) -> Parsed:
        reasoning, content, _tools = self._parser.parse(text, self._request, model_output_token_ids=list(token_ids))
        return Parsed(reasoning=reasoning or "", content=content or "")
