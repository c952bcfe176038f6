"""tool_choice "required" or a named function: the call is forced with a JSON-schema constraint on decoding.

As vLLM does it: for a named function the model writes that function's arguments object; for "required" it
writes a non-empty array of {"name", "parameters"} objects, one schema branch per tool. Either way no tool-call
parser is involved: the constrained output already is the call, and both engines enforce schemas (xgrammar).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatgen.chat.types import ToolCall, ToolCallDelta, new_tool_call_id

if TYPE_CHECKING:
    # Only a type here: validation (validation/tools.py) builds ForcedTools, and imports this module.
    from chatgen.chat.validation.schemas import Grammar


@dataclass
class ForcedTools:
    # The named function, or None for "required" (any of the tools, one or more calls).
    function: str | None
    grammar: Grammar
    call_ids: list[str] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        # OpenAI (and vLLM) report "stop" for a named function and "tool_calls" for "required".
        return "stop" if self.function else "tool_calls"

    def calls(self, text: str) -> tuple[ToolCall, ...]:
        """The complete output as tool calls (empty when it was cut off before it became valid JSON)."""
        try:
            parsed = json.loads(text)
        except ValueError:
            # Cut off (max_tokens) before the JSON closed: no call, as vLLM; the choice ends with "length".
            return ()
        if self.function is not None:
            return (ToolCall(self._id(0), self.function, text),)
        items = parsed
        return tuple(
            ToolCall(self._id(i), item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
            for i, item in enumerate(items)
        )

    def for_choice(self) -> ForcedTools:
        """A copy for one choice: each choice's calls get ids of their own."""
        return ForcedTools(self.function, self.grammar)

    def first_delta(self) -> ToolCallDelta | None:
        """Streams of a named function open with the call's id and name; its arguments then stream as written."""
        return ToolCallDelta(0, id=self._id(0), name=self.function, arguments="") if self.function else None

    def _id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(new_tool_call_id())
        return self.call_ids[index]
