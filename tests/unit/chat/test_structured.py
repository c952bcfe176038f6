"""chat.validation.structured: response_format and vLLM's structured_outputs become one constraint, or a 400
naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation.structured import choice_grammar, constraint, is_ebnf
from chatgen.errors import ApiError, Failure
from chatgen.v1 import chatgen_pb2 as pb

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def request(**fields: Any) -> pb.CreateCompletionRequest:
    return json_format.ParseDict({"model": "m", "prompt": "p", **fields}, pb.CreateCompletionRequest())


@pytest.mark.parametrize(
    ("structured", "kind", "text", "param"),
    [
        ({"json": SCHEMA}, "json", SCHEMA, "json"),
        ({"json": json.dumps(SCHEMA)}, "json", SCHEMA, "json"),
        ({"json_object": True}, "json", {"type": "object"}, "json_object"),
        ({"regex": "[0-9]+"}, "regex", "[0-9]+", "regex"),
        ({"choice": ["yes", 'say "no"']}, "ebnf", 'root ::= "yes" | "say \\"no\\""', "choice"),
        ({"grammar": 'root ::= "a" "b"*'}, "ebnf", 'root ::= "a" "b"*', "grammar"),
        ({"grammar": 'start: "a"+  // no EBNF rule'}, "lark", 'start: "a"+  // no EBNF rule', "grammar"),
        # Null members are not sent (vLLM's None), so one constraint remains.
        ({"json": None, "regex": "x"}, "regex", "x", "regex"),
    ],
)
def test_each_kind_becomes_its_constraint(structured: dict[str, Any], kind: str, text: Any, param: str) -> None:
    grammar = constraint(request(structured_outputs=structured))
    assert grammar is not None
    assert (grammar.kind, grammar.param) == (kind, f"structured_outputs.{param}")
    assert (json.loads(grammar.text) if kind == "json" else grammar.text) == text


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"structured_outputs": {}}, "structured_outputs", "got none"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "got regex, choice"),
        ({"structured_outputs": {"json_object": False}}, "structured_outputs", "got none"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "not valid JSON"),
        ({"structured_outputs": {"json": {"type": 5}}}, "structured_outputs.json", "invalid JSON schema"),
        ({"structured_outputs": {"json": 7}}, "structured_outputs.json", "JSON Schema object"),
        ({"structured_outputs": {"regex": ""}}, "structured_outputs.regex", "empty"),
        ({"structured_outputs": {"regex": "a{1,5000}"}}, "structured_outputs.regex", "repeats more than"),
        ({"structured_outputs": {"grammar": "  \n"}}, "structured_outputs.grammar", "empty"),
        ({"structured_outputs": {"choice": ["a", ""]}}, "structured_outputs.choice[1]", "empty"),
        ({"structured_outputs": {"choice": ["c"] * 1001}}, "structured_outputs.choice", "more than 1000"),
        (
            {"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
            "structured_outputs",
            "not both",
        ),
    ],
)
def test_what_cannot_be_a_constraint_is_an_error_naming_its_field(
    fields: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(ApiError) as info:
        constraint(request(**fields))
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, param)
    assert words in info.value.message, info.value.message


def test_response_format_alone_is_the_constraint_and_text_is_none() -> None:
    assert constraint(request()) is None
    assert constraint(request(response_format={"type": "text"})) is None
    grammar = constraint(request(response_format={"type": "json_object"}))
    assert grammar is not None and (grammar.kind, grammar.param) == ("json", "response_format")


def test_choices_are_escaped_as_ebnf_strings() -> None:
    assert choice_grammar(["a\\b", "tab\there", "\x01"], "p") == 'root ::= "a\\\\b" | "tab\\there" | "\\u0001"'


def test_ebnf_is_told_from_lark_as_vllm_does() -> None:
    assert is_ebnf('root ::= "x"')
    assert not is_ebnf('start: "x"\n# root ::= in a comment does not count')


def test_a_structural_tag_response_format_is_unsupported_not_invalid() -> None:
    with pytest.raises(ApiError) as err:
        constraint(request(response_format={"type": "structural_tag"}))
    assert (err.value.failure, err.value.param) == (Failure.UNSUPPORTED, "response_format.type")
    with pytest.raises(ApiError) as other:
        constraint(request(response_format={"type": "yaml"}))
    assert (other.value.failure, other.value.param) == (Failure.INVALID_REQUEST, "response_format.type")
