"""tool_choice "required" or a named function: the call is forced with a JSON-schema constraint on decoding.

As vLLM does it: for a named function the model writes that function's arguments object; for "required" it
writes a non-empty array of {"name", "parameters"} objects, one schema branch per tool. Either way no tool-call
parser is involved: the constrained output already is the call, and both engines enforce schemas (xgrammar).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chatgen.chat.types import ToolCall, ToolCallDelta, new_tool_call_id
from chatgen.errors import invalid


@dataclass
class ForcedTools:
    # The named function, or None for "required" (any of the tools, one or more calls).
    function: str | None
    schema: str
    call_ids: list[str] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        # OpenAI (and vLLM) report "stop" for a named function and "tool_calls" for "required".
        return "stop" if self.function else "tool_calls"

    def calls(self, text: str) -> tuple[ToolCall, ...]:
        """The complete output as tool calls (empty when it was cut off before it became valid JSON)."""
        if self.function is not None:
            return (ToolCall(self._id(0), self.function, text),)
        try:
            items = json.loads(text)
        except ValueError:
            return ()
        return tuple(
            ToolCall(self._id(i), item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
            for i, item in enumerate(items)
        )

    def for_choice(self) -> ForcedTools:
        """A copy for one choice: each choice's calls get ids of their own."""
        return ForcedTools(self.function, self.schema)

    def first_delta(self) -> ToolCallDelta | None:
        """Streams of a named function open with the call's id and name; its arguments then stream as written."""
        return ToolCallDelta(0, id=self._id(0), name=self.function, arguments="") if self.function else None

    def _id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(new_tool_call_id())
        return self.call_ids[index]


def forced_tools(
    tools: tuple[dict[str, Any], ...], tool_choice: str | None, function: str | None, single: bool
) -> ForcedTools | None:
    """The forced call's schema for tool_choice "required" or a named `function`; None for the other choices.
    `single`: parallel_tool_calls false, so "required" allows one call."""
    if tool_choice != "required" and function is None:
        return None
    if not tools:
        raise invalid("tool_choice needs 'tools'", "tool_choice")
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    if function is not None:
        if function not in by_name:
            raise invalid(f"tool_choice names '{function}', which is not in 'tools'", "tool_choice")
        return ForcedTools(function, json.dumps(_parameters(by_name[function])))
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "parameters": _parameters(fn)},
            "required": ["name", "parameters"],
        }
        for name, fn in by_name.items()
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
    if single:
        schema["maxItems"] = 1
    return ForcedTools(None, json.dumps(schema))


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}
