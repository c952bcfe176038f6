"""JSON schemas that decoding is held to (`response_format`, a forced tool's parameters): valid JSON Schema, and
within the bounds that keep compiling them into a grammar cheap, checked before anything is compiled.

The bounds are OpenAI's for structured outputs where it states them (5,000 properties, 1,000 enum values,
120,000 characters of names and values), vLLM's for nesting (64), and for the keywords whose numbers become
grammar states (lengths, item counts, regex repetitions), bounds measured with xgrammar on the embedded
model's vocabulary: `"pattern": "a{1,10000}"` takes 6.4 s to compile, `{1,1000}` 0.04 s. What passes here can
still be slow in combination; the compile check (chat.grammar) bounds its time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from chatgen.engine.base import Constraint
from chatgen.errors import invalid

MAX_NESTING = 64
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
MAX_STRING_CHARS = 120_000
# minLength, maxLength, minItems, maxItems, minProperties, maxProperties.
MAX_COUNT = 10_000
MAX_PATTERN_CHARS = 1000
MAX_REPEAT = 1000

_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


@dataclass(frozen=True)
class Grammar:
    """What decoding is held to (a JSON schema as text, a regex, a grammar) and the request field it came from."""

    text: str
    param: str
    kind: Literal["json", "regex", "ebnf", "lark"] = "json"

    @property
    def constraint(self) -> Constraint:
        return Constraint(self.kind, self.text)


@dataclass
class _Tally:
    properties: int = 0
    enum_values: int = 0
    chars: int = 0


def checked_grammar(schema: Any, param: str) -> Grammar:
    """`schema` as the grammar of `param`, or the error that says what in it is invalid or too large."""
    if not isinstance(schema, dict):
        raise invalid(f"{param} must be a JSON Schema object", param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise invalid(f"invalid JSON schema: {exc.message[:200]}", param) from None
    _walk(schema, param, 1, _Tally())
    return Grammar(json.dumps(schema), param)


def _walk(node: Any, param: str, depth: int, tally: _Tally) -> None:
    if depth > MAX_NESTING:
        raise invalid(f"{param} nests deeper than {MAX_NESTING} levels", param)
    if isinstance(node, list):
        for item in node:
            _walk(item, param, depth + 1, tally)
        return
    if isinstance(node, str):
        _count_chars(len(node), param, tally)
        return
    if not isinstance(node, dict):
        return
    _check_keywords(node, param, tally)
    for key, value in node.items():
        _count_chars(len(key), param, tally)
        _walk(value, param, depth + 1, tally)


def _check_keywords(node: dict[str, Any], param: str, tally: _Tally) -> None:
    properties = node.get("properties")
    if isinstance(properties, dict):
        tally.properties += len(properties)
        if tally.properties > MAX_PROPERTIES:
            raise invalid(f"{param} has more than {MAX_PROPERTIES} properties in all", param)
    enum = node.get("enum")
    if isinstance(enum, list):
        tally.enum_values += len(enum)
        if tally.enum_values > MAX_ENUM_VALUES:
            raise invalid(f"{param} has more than {MAX_ENUM_VALUES} enum values in all", param)
    for keyword in _COUNT_KEYWORDS:
        value = node.get(keyword)
        if isinstance(value, int | float) and value > MAX_COUNT:
            raise invalid(f"{param}: {keyword} {value} is over {MAX_COUNT}", param)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, param)


def _check_pattern(pattern: str, param: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise invalid(f"{param}: a pattern is longer than {MAX_PATTERN_CHARS} characters", param)
    for low, high in REPEAT.findall(pattern):
        if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
            raise invalid(f"{param}: a pattern repeats more than {MAX_REPEAT} times ({{{low},{high}}})", param)


def _count_chars(n: int, param: str, tally: _Tally) -> None:
    tally.chars += n
    if tally.chars > MAX_STRING_CHARS:
        raise invalid(f"{param} has more than {MAX_STRING_CHARS} characters of names and values", param)
