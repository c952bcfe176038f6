"""Reasoning and tool-call extraction from model output, with vLLM's own parsers.

vLLM's parsers are written against its OpenAI protocol objects, so each chat request is mirrored into a vLLM
`ChatCompletionRequest` for them. A per-request `OutputParser` turns raw engine text into reasoning, content and
tool calls, incrementally for streams (`delta`) and in one go for unary calls (`final`), as vLLM's server does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatgen.chat.types import ToolCall, ToolCallDelta, new_tool_call_id
from chatgen.chat.validation import ChatPlan


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()


def load_parser_class(reasoning_parser: str | None, tool_parser: str | None, tokenizer: Any) -> type | None:
    """The vLLM Parser class for the configured parser names (None when none is configured)."""
    if not reasoning_parser and not tool_parser:
        return None
    from vllm.parser import ParserManager

    return ParserManager.get_parser(
        tool_parser_name=tool_parser or None,
        reasoning_parser_name=reasoning_parser or None,
        enable_auto_tools=bool(tool_parser),
        tokenizer=tokenizer,
    )


class OutputParser:
    def __init__(
        self,
        parser_cls: type,
        tokenizer: Any,
        plan: ChatPlan,
        prompt_token_ids: list[int],
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        # Tool calls are only parsed where the caller offered tools and left the choice to the model.
        self._tools_enabled = plan.parses_tool_calls
        template_kwargs = plan.template_variables
        # Validated from plain data: pydantic builds vLLM's typed tool and tool-choice params from our dicts.
        self._request = ChatCompletionRequest.model_validate(
            {
                "model": plan.model,
                "messages": [m.openai_dict() for m in plan.messages],
                "chat_template_kwargs": template_kwargs,
                "tools": list(plan.tools) or None,
                "tool_choice": plan.tool_choice or ("auto" if plan.tools else None),
            }
        )
        tools = self._request.tools if self._tools_enabled else None
        self._parser = parser_cls(tokenizer, tools, chat_template_kwargs=template_kwargs)
        self._parser.set_prompt_token_ids(prompt_token_ids)
        self._prompt_token_ids = prompt_token_ids
        # Set once a streamed delta carried a tool call: the stream then finishes with "tool_calls".
        self.called_tools = False

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
        deltas = tuple(
            ToolCallDelta(
                index=d.index,
                id=d.id,
                name=d.function.name if d.function else None,
                arguments=d.function.arguments if d.function else None,
            )
            for d in (msg.tool_calls or ())
        )
        self.called_tools = self.called_tools or bool(deltas)
        return Parsed(reasoning=msg.reasoning or "", content=msg.content or "", tool_call_deltas=deltas)

    def final(self, text: str, token_ids: Sequence[int]) -> Parsed:
        reasoning, content, calls = self._parser.parse(
            text, self._request, enable_auto_tools=self._tools_enabled, model_output_token_ids=list(token_ids)
        )
        tool_calls = tuple(
            ToolCall(id=c.id or new_tool_call_id(), name=c.name, arguments=_json_text(c.arguments))
            for c in (calls or ())
        )
        return Parsed(reasoning=reasoning or "", content=content or "", tool_calls=tool_calls)


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
