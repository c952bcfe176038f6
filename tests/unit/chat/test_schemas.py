"""chat.validation.schemas: the schemas decoding is held to are valid and within the bounds that keep their
grammar cheap to compile; each error names the field the schema came from."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation import ServedModel, validate_chat
from chatgen.chat.validation.schemas import MAX_NESTING, checked_grammar
from chatgen.errors import ApiError, Failure
from chatgen.v1 import chatgen_pb2 as pb

MODEL = ServedModel("m", "vllm")
PARAM = "response_format.json_schema.schema"


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


BOMBS: list[tuple[str, dict[str, Any]]] = [
    ("enum of 100,000", {"enum": [f"s{i}" for i in range(100_000)]}),
    ("enums of 1,001 in all", {"anyOf": [{"enum": list(range(600))}, {"enum": list(range(401))}]}),
    ("minLength 1,000,000", {"type": "string", "minLength": 1_000_000}),
    ("maxItems 100,000", {"type": "array", "maxItems": 100_000}),
    ("pattern a{1,100000}", {"type": "string", "pattern": "a{1,100000}"}),
    ("pattern (ab){5000}", {"type": "string", "pattern": "(ab){5000}"}),
    ("pattern of 2,000 characters", {"type": "string", "pattern": "a" * 2000}),
    ("5,001 properties", {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5001)}}),
    ("120,001 characters", {"type": "object", "description": "d" * 120_001}),
    ("nested too deep", nested(MAX_NESTING)),
]


@pytest.mark.parametrize("schema", [s for _, s in BOMBS], ids=[name for name, _ in BOMBS])
def test_a_schema_past_a_bound_is_400_naming_its_field(schema: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as info:
        checked_grammar(schema, PARAM)
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, PARAM)
    assert len(info.value.message) < 300


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": [f"s{i}" for i in range(1000)]},
        {"type": "string", "minLength": 10, "maxLength": 10_000, "pattern": "^[a-z]{1,1000}$"},
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(100)}},
        nested(20),
    ],
    ids=["1000-enum", "bounded-string", "100-properties", "nested-20"],
)
def test_a_schema_within_the_bounds_passes(schema: dict[str, Any]) -> None:
    grammar = checked_grammar(schema, PARAM)
    assert grammar.param == PARAM and grammar.text.startswith("{")


def test_a_forced_tools_parameters_are_bounded_with_the_tools_field() -> None:
    bomb = {"type": "object", "properties": {"x": {"type": "string", "minLength": 1_000_000}}}
    tools = [
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "bomb", "parameters": bomb}},
    ]
    for choice in ("required", {"type": "function", "function": {"name": "ok"}}):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice}
        with pytest.raises(ApiError) as info:
            validate_chat(json_format.ParseDict(body, pb.CreateChatCompletionRequest()), MODEL, streaming=False)
        assert info.value.param == "tools[1].function.parameters"


def test_a_named_tools_grammar_is_its_parameters() -> None:
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "now"}},
    }
    plan = validate_chat(json_format.ParseDict(body, pb.CreateChatCompletionRequest()), MODEL, streaming=False)
    assert plan.sampling.grammar is not None
    assert plan.sampling.grammar.param == "tools[0].function.parameters"
