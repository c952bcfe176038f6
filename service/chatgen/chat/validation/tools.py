"""tool_choice "required" or a named function -> the ForcedTools plan (chat.forced_tools): the grammar the call is
decoded under, each tool's parameters checked as a grammar of its own."""

from __future__ import annotations

from typing import Any

from chatgen.chat.forced_tools import ForcedTools
from chatgen.chat.validation.schemas import checked_grammar
from chatgen.errors import invalid, shown


def forced_tools(
    tools: tuple[dict[str, Any], ...], tool_choice: str | None, function: str | None, single: bool
) -> ForcedTools | None:
    """The forced call's schema for tool_choice "required" or a named `function`; None for the other choices.
    `single`: parallel_tool_calls false, so "required" allows one call."""
    if tool_choice != "required" and function is None:
        return None
    if not tools:
        raise invalid("tool_choice needs 'tools'", "tool_choice")
    # Each tool's parameters are a grammar of their own (a named one), or a branch of the grammar of all.
    grammars = [
        checked_grammar(_parameters(t["function"]), f"tools[{i}].function.parameters") for i, t in enumerate(tools)
    ]
    names = [t["function"]["name"] for t in tools]
    if function is not None:
        if function not in names:
            raise invalid(f"tool_choice names {shown(function)}, which is not in 'tools'", "tool_choice")
        return ForcedTools(function, grammars[names.index(function)])
    branches, defs = [], {}
    for i, (name, tool) in enumerate(dict(zip(names, tools, strict=True)).items()):
        parameters = _parameters(tool["function"])
        if _has_ref(parameters):
            # Its references point into its own parameters: moved under the schema of all tools, they would point
            # at nothing ("Pointer '/$defs/...' does not exist"). The parameters go to $defs/tool_<i>, each local
            # reference rebased there.
            key = f"tool_{i}"
            defs[key] = _rebased(parameters, f"#/$defs/{key}")
            parameters = {"$ref": f"#/$defs/{key}"}
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "parameters": parameters},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
    if single:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return ForcedTools(None, checked_grammar(schema, "tools"))


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return isinstance(node.get("$ref"), str) or any(_has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False


def _rebased(node: Any, base: str) -> Any:
    """A copy of `node` whose local references ("#", "#/...") point under `base` instead of the document root."""
    if isinstance(node, list):
        return [_rebased(v, base) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rebased(v, base) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = base + ref[1:]
    return out
