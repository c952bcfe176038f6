"""chat.forced_tools: tool_choice "required" or a named function becomes a decoding schema, and the constrained
output becomes the calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatgen.chat.validation.tools import forced_tools
from chatgen.errors import ApiError

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
NOW: dict[str, Any] = {"type": "function", "function": {"name": "now"}}


def test_no_forcing_for_auto_or_none() -> None:
    assert forced_tools((WEATHER,), "auto", None, False) is None
    assert forced_tools((WEATHER,), None, None, False) is None


def test_a_named_function_is_decoded_under_its_parameters() -> None:
    forced = forced_tools((WEATHER, NOW), "function", "weather", False)
    assert forced is not None and forced.finish_reason == "stop"
    assert json.loads(forced.grammar.text) == WEATHER["function"]["parameters"]
    (call,) = forced.calls('{"city": "Paris"}')
    assert (call.name, call.arguments) == ("weather", '{"city": "Paris"}')
    opening = forced.first_delta()
    assert opening is not None and (opening.id, opening.name, opening.arguments) == (call.id, "weather", "")
    assert forced.calls('{"city": "Pa') == ()  # cut off by max_tokens: no call
    # A function without parameters takes any object.
    assert json.loads(forced_tools((NOW,), "function", "now", False).grammar.text) == {"type": "object"}  # type: ignore[union-attr]


def test_required_is_an_array_of_calls_over_the_tools() -> None:
    forced = forced_tools((WEATHER, NOW), "required", None, single=True)
    assert forced is not None and forced.finish_reason == "tool_calls" and forced.first_delta() is None
    schema = json.loads(forced.grammar.text)
    assert (schema["minItems"], schema["maxItems"]) == (1, 1)
    assert [b["properties"]["name"]["const"] for b in schema["items"]["anyOf"]] == ["weather", "now"]
    calls = forced.calls('[{"name": "weather", "parameters": {"city": "Oslo"}}, {"name": "now", "parameters": {}}]')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Oslo"}), ("now", {})]
    assert calls[0].id.startswith("chatcmpl-tool-") and calls[0].id != calls[1].id
    assert forced.calls('[{"name": "weather", "param') == ()  # cut off by max_tokens: no calls


def test_each_choice_gets_its_own_call_ids() -> None:
    forced = forced_tools((WEATHER,), "function", "weather", False)
    assert forced is not None
    a, b = forced.for_choice(), forced.for_choice()
    assert a.calls("{}")[0].id != b.calls("{}")[0].id
    assert a.calls("{}")[0].id == a.calls("{}")[0].id  # stable within a choice


@pytest.mark.parametrize(("tools", "choice", "function"), [((), "required", None), ((WEATHER,), "function", "missing")])
def test_forcing_what_is_not_offered_is_a_400(
    tools: tuple[dict[str, Any], ...], choice: str, function: str | None
) -> None:
    with pytest.raises(ApiError) as info:
        forced_tools(tools, choice, function, False)
    assert info.value.param == "tool_choice"


def test_references_in_parameters_are_rebased_under_the_schema_of_all_tools() -> None:
    import xgrammar

    place = {"type": "object", "properties": {"city": {"type": "string"}}}
    book = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"to": {"$ref": "#/$defs/Place"}, "again": {"$ref": "#"}},
                "$defs": {"Place": place},
            },
        },
    }
    forced = forced_tools((book, WEATHER), "required", None, single=False)
    assert forced is not None
    schema = json.loads(forced.grammar.text)
    moved = schema["$defs"]["tool_0"]
    assert moved["properties"]["to"] == {"$ref": "#/$defs/tool_0/$defs/Place"}
    assert moved["properties"]["again"] == {"$ref": "#/$defs/tool_0"}
    branches = schema["items"]["anyOf"]
    assert branches[0]["properties"]["parameters"] == {"$ref": "#/$defs/tool_0"}
    assert branches[1]["properties"]["parameters"] == WEATHER["function"]["parameters"]  # no references: as it was
    xgrammar.Grammar.from_json_schema(forced.grammar.text)  # every pointer resolves
