"""The one constraint decoding is held to: OpenAI's `response_format`, or vLLM's `structured_outputs` (a JSON
schema, a regex, a choice of strings, a grammar, any JSON object). Checked here as far as it can be without
compiling it; chat.grammar then compiles it, bounded in time, before any engine sees it."""

from __future__ import annotations

import json
from typing import Any

from chatgen.chat.validation.schemas import (
    MAX_ENUM_VALUES,
    MAX_REPEAT,
    MAX_STRING_CHARS,
    REPEAT,
    Grammar,
    checked_grammar,
)
from chatgen.chat.validation.values import as_python, kind
from chatgen.errors import invalid, shown, unsupported
from chatgen.v1 import chatgen_pb2 as pb

# OpenAI's json_object mode: any JSON object.
JSON_OBJECT_SCHEMA = '{"type": "object"}'
# structured_outputs' constraints, exactly one of which a request sends.
KINDS = ("json", "regex", "choice", "grammar", "json_object")
# A regex or a grammar is one string of the request: the bound on a schema's names and values.
MAX_TEXT_CHARS = MAX_STRING_CHARS


def constraint(request: Any) -> Grammar | None:
    """What the request holds decoding to, or None for free text."""
    fmt = response_format_schema(request)
    if not request.HasField("structured_outputs"):
        return fmt
    if fmt is not None:
        raise invalid("send response_format or structured_outputs, not both", "structured_outputs")
    return structured_outputs(request.structured_outputs)


def response_format_schema(request: Any) -> Grammar | None:
    """response_format -> the JSON Schema to enforce, or None for free text."""
    if not request.HasField("response_format"):
        return None
    fmt = request.response_format
    if fmt.type in ("", "text"):
        return None
    if fmt.type == "json_object":
        return Grammar(JSON_OBJECT_SCHEMA, "response_format")
    if fmt.type == "structural_tag":
        # vLLM's other response_format: xgrammar's structural tags, not served (nor in structured_outputs).
        message = "response_format type 'structural_tag': structural tags are not served"
        raise unsupported(message, "response_format.type")
    if fmt.type != "json_schema":
        raise invalid(
            f"response_format.type must be text, json_object or json_schema, got {shown(fmt.type)}",
            "response_format.type",
        )
    if not fmt.HasField("json_schema") or not fmt.json_schema.HasField("schema"):
        raise invalid("response_format json_schema needs json_schema.schema", "response_format.json_schema.schema")
    return checked_grammar(as_python(fmt.json_schema.schema), "response_format.json_schema.schema")


def structured_outputs(so: pb.StructuredOutputs) -> Grammar:
    """vLLM's structured_outputs: exactly one constraint, as vLLM demands."""
    given = [name for name in KINDS if _sent(so, name)]
    if len(given) != 1:
        what = "none" if not given else ", ".join(given)
        raise invalid(f"structured_outputs needs exactly one of {', '.join(KINDS)}; got {what}", "structured_outputs")
    name = given[0]
    param = f"structured_outputs.{name}"
    if name == "json":
        return checked_grammar(_schema(so.json, param), param)
    if name == "json_object":
        return Grammar(JSON_OBJECT_SCHEMA, param)
    if name == "regex":
        return Grammar(_regex(so.regex, param), param, "regex")
    if name == "choice":
        return Grammar(choice_grammar(list(so.choice), param), param, "ebnf")
    text = _text(so.grammar, param)
    return Grammar(text, param, "ebnf" if is_ebnf(text) else "lark")


def _sent(so: pb.StructuredOutputs, name: str) -> bool:
    if name == "choice":
        return bool(so.choice)
    if name == "json":
        return so.HasField("json") and kind(so.json) != "null_value"
    if name == "json_object":
        return so.json_object
    return so.HasField(name)


def _schema(value: Any, param: str) -> Any:
    """A schema sent as an object, or as its JSON text (vLLM takes both)."""
    schema = as_python(value)
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise invalid(f"{param} is not valid JSON: {exc}", param) from None
    return schema


def _text(text: str, param: str) -> str:
    if not text.strip():
        raise invalid(f"{param} is empty", param)
    if len(text) > MAX_TEXT_CHARS:
        raise invalid(f"{param} is longer than {MAX_TEXT_CHARS} characters", param)
    return text


def _regex(pattern: str, param: str) -> str:
    """A regex within the bounds that keep compiling it cheap (as a schema's `pattern`, chat.validation.schemas);
    whether it is a regex at all, the compile says."""
    _text(pattern, param)
    for low, high in REPEAT.findall(pattern):
        if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
            raise invalid(f"{param} repeats more than {MAX_REPEAT} times ({{{low},{high}}})", param)
    return pattern


def choice_grammar(choices: list[str], param: str) -> str:
    """The choices as an EBNF grammar of alternatives, as vLLM's xgrammar backend builds it."""
    if len(choices) > MAX_ENUM_VALUES:
        raise invalid(f"{param} has more than {MAX_ENUM_VALUES} choices", param)
    if sum(map(len, choices)) > MAX_TEXT_CHARS:
        raise invalid(f"{param} has more than {MAX_TEXT_CHARS} characters in all", param)
    for i, choice in enumerate(choices):
        if not choice:
            raise invalid(f"{param}[{i}] is empty; every choice must have text", f"{param}[{i}]")
    return "root ::= " + " | ".join(f'"{_ebnf_escaped(c)}"' for c in choices)


_EBNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _ebnf_escaped(text: str) -> str:
    return "".join(
        _EBNF_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch) for ch in text
    )


def is_ebnf(grammar: str) -> bool:
    """vLLM's test (grammar_is_likely_lark, inverted): EBNF defines its rules with `::=`; Lark does not."""
    for line in grammar.splitlines():
        code = line.split("#", 1)[0].split("//", 1)[0]
        if "::=" in code:
            return True
    return False
