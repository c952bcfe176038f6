"""tool_choice "required" or a named function: the call is forced with a JSON-schema constraint on decoding.

As vLLM does it: for a named function the model writes that function's arguments object; for "required" it
writes a non-empty array of {"name", "parameters"} objects, one schema branch per tool. Either way no tool-call
parser is involved: the constrained output already is the call, and both engines enforce schemas (xgrammar).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from chatgen.chat.types import ChatRequest, ToolCall, ToolCallDelta
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

    def first_delta(self) -> ToolCallDelta | None:
        """Streams of a named function open with the call's id and name; its arguments then stream as written."""
        return ToolCallDelta(0, id=self._id(0), name=self.function, arguments="") if self.function else None

    def _id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(f"chatcmpl-tool-{uuid.uuid4().hex[:16]}")
        return self.call_ids[index]


def forced_tools(request: ChatRequest, forced_function: str | None) -> ForcedTools | None:
    if request.tool_choice != "required" and forced_function is None:
        return None
    if not request.tools:
        raise invalid("tool_choice needs 'tools'", "tool_choice")
    by_name = {t["function"]["name"]: t["function"] for t in request.tools}
    if forced_function is not None:
        if forced_function not in by_name:
            raise invalid(f"tool_choice names '{forced_function}', which is not in 'tools'", "tool_choice")
        return ForcedTools(forced_function, json.dumps(_parameters(by_name[forced_function])))
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "parameters": _parameters(fn)},
            "required": ["name", "parameters"],
        }
        for name, fn in by_name.items()
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
    if request.parallel_tool_calls is False:
        schema["maxItems"] = 1
    return ForcedTools(None, json.dumps(schema))


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}
