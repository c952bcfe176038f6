"""gateway/json_types.lua: a REST body's JSON types are checked at the edge as strictly as OpenAI checks them,
against the request message's own fields, where the proto3 JSON mapping after it would take "3" for 3, "yes" for
true and an object for an array (run under LuaJIT: tests/support/lua.py)."""

from __future__ import annotations

import random
from typing import Any

import jsonschema
import pytest

from chatgen.gateway.request_types import PATHS, message_node, request_types
from chatgen.v1 import chatgen_pb2 as pb
from tests.support.lua import BodyCheck

CHAT = pb.CreateChatCompletionRequest.DESCRIPTOR.full_name
COMPLETION = pb.CreateCompletionRequest.DESCRIPTOR.full_name
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def lua() -> BodyCheck:
    return BodyCheck()


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "m", "messages": {"role": "user", "content": "hi"}}, "messages", "expected an array"),
        ({"model": "m", "messages": ASK, "stream": "yes"}, "stream", "expected a boolean, but got a string"),
        ({"model": "m", "messages": ASK, "stream": 1}, "stream", "expected a boolean, but got a number"),
        ({"model": "m", "messages": ASK, "max_tokens": "3"}, "max_tokens", "expected an integer"),
        ({"model": "m", "messages": ASK, "max_tokens": 2.5}, "max_tokens", "expected an integer"),
        ({"model": "m", "messages": ASK, "max_tokens": 2**31}, "max_tokens",
         "2147483648 is greater than the maximum of 2147483647"),
        ({"model": "m", "messages": ASK, "seed": 2**64}, "seed", "is greater than the maximum of 9223372036854775807"),
        ({"model": "m", "messages": ASK, "temperature": "0.5"}, "temperature", "expected a number"),
        ({"model": "m", "messages": ASK, "temperature": True}, "temperature", "expected a number, but got a boolean"),
        ({"model": 5, "messages": ASK}, "model", "expected a string"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": {}}]}, "messages[0].tool_calls",
         "expected an array"),
        ({"model": "m", "messages": ASK, "logit_bias": {"5": "x"}}, "logit_bias.5", "expected a number"),
        ({"model": "m", "messages": ASK, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
         "expected a boolean"),
        ({"model": "m", "messages": ASK, "chat_template_kwargs": []}, "chat_template_kwargs", "expected an object"),
        ({"model": "m", "messages": ASK, "stop_token_ids": [1, None]}, "stop_token_ids[1]", "but got null instead"),
    ],
)  # fmt: skip
def test_wrong_json_types_are_refused_naming_the_field(lua: BodyCheck, body: Any, param: str, says: str) -> None:
    refusal = lua.check(CHAT, body)
    assert refusal is not None and (refusal.kind, refusal.param) == ("invalid", param)
    assert refusal.message.startswith(("Invalid type for '", "Invalid value for '")) and says in refusal.message


def test_a_valid_body_passes_with_nulls_integral_numbers_and_unknown_keys(lua: BodyCheck) -> None:
    body = {
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": None}],
        "max_tokens": 3.0, "temperature": 0, "n": None, "stop": ["a"], "seed": 2**40, "logit_bias": {"7": -1},
        "tools": None, "some_unknown_field": {"ignored": True}, "stream": True,
    }  # fmt: skip
    assert lua.check(CHAT, body) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON: no valid JSON value at line 1, column 2"),
        ("", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"model": "m"} trailing', "not valid JSON: extra data"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("null", "must be a JSON object"),
    ],
)
def test_what_is_not_a_json_object_is_refused(lua: BodyCheck, text: str, says: str) -> None:
    # As transport/rest.py's parse answers the bodies that reach the server (the …Http RPCs' callers on gRPC).
    refusal = lua.check(CHAT, text)
    assert refusal is not None and refusal.kind == "invalid" and refusal.param is None
    assert says in refusal.message and refusal.message.startswith("The request body ")


def test_the_shallowest_failure_is_reported_as_jsonschema_reports_it(lua: BodyCheck) -> None:
    body = {"model": 5, "messages": [{"role": 1}], "stream": "x", "temperature": "y"}
    refusal = lua.check(CHAT, body)
    # Depth 1 before depth 3; of the depth-1 ones, the greatest name (jsonschema's best_match).
    assert refusal is not None and refusal.param == "temperature"


def test_each_path_checks_its_own_message_and_invocations_go_by_shape(lua: BodyCheck) -> None:
    assert lua.message_for("/v1/completions", {}) == COMPLETION
    assert lua.message_for("/invocations", {"messages": ASK}) == CHAT
    assert lua.message_for("/invocations", {"prompt": "p"}) == COMPLETION
    assert lua.message_for("/invocations", {"input": "p"}) is None
    assert lua.message_for("/v1/models", {}) is None
    refusal = lua.check(COMPLETION, {"model": "m", "prompt": "p", "echo": "yes"})
    assert refusal is not None and refusal.param == "echo"


# The oracle: the same types as a JSON Schema, judged by jsonschema (best_match), as transport/rest.py judged
# bodies before the check moved to the gateway.
def _schema(node: dict[str, Any], nullable: bool) -> dict[str, Any]:
    kinds = {"object": "object", "map": "object", "struct": "object", "array": "array", "list": "array"}
    t = node["t"]
    if t == "any":
        return {}
    out: dict[str, Any] = {"type": kinds.get(t, t)}
    if t == "object":
        out["properties"] = {name: _schema(child, True) for name, child in node["fields"]}
    elif t == "map":
        out["additionalProperties"] = _schema(node["values"], False)
    elif t == "array":
        out["items"] = _schema(node["items"], False)
    elif t == "integer":
        out |= {"minimum": node["min"], "maximum": node["max"]}
    if nullable:
        out["type"] = [out["type"], "null"]
    return out


def _oracle(node: dict[str, Any], body: dict[str, Any]) -> tuple[str, str] | None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema(node, False)).iter_errors(body))
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return path, "Invalid type" if error.validator == "type" else "Invalid value"


_VALUES: list[Any] = [None, True, False, 0, -1, 2.5, 3.0, 2**31, -(2**31) - 1, 1e300, "", "3", "yes", [], [1],
                      ["a"], [None], {}, {"a": 1}, {"role": "user"}]  # fmt: skip


def _body(node: dict[str, Any], rnd: random.Random, depth: int = 0) -> Any:
    if rnd.random() < 0.3 or depth > 3:
        return rnd.choice(_VALUES)
    if node["t"] == "object":
        fields = rnd.sample(node["fields"], min(len(node["fields"]), rnd.randint(0, 4)))
        return {name: _body(child, rnd, depth + 1) for name, child in fields}
    if node["t"] == "array":
        return [_body(node["items"], rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    if node["t"] == "map":
        return {str(rnd.randint(0, 9)): _body(node["values"], rnd, depth + 1) for _ in range(rnd.randint(0, 3))}
    return rnd.choice(_VALUES)


@pytest.mark.parametrize("message", sorted({m.DESCRIPTOR.full_name for m in PATHS.values()}))
def test_the_check_agrees_with_a_json_schema_validator(lua: BodyCheck, message: str) -> None:
    node = request_types()["messages"][message]
    rnd = random.Random(message)
    checked = refused = 0
    for _ in range(400):
        body = _body(node, rnd)
        if not isinstance(body, dict):
            continue
        refusal = lua.check(message, body)
        got = (
            None if refusal is None or refusal.kind != "invalid" else (refusal.param, refusal.message.split(" for")[0])
        )
        if refusal is not None and refusal.kind == "unsupported":
            continue
        assert got == _oracle(node, body), body
        checked += 1
        refused += got is not None
    # Both sides of the check were exercised.
    assert checked > 200 and 0 < refused < checked


def test_the_tree_is_the_descriptor() -> None:
    node = message_node(pb.CreateChatCompletionRequest.DESCRIPTOR)
    fields = dict(node["fields"])
    assert [name for name, _ in node["fields"]] == [f.name for f in pb.CreateChatCompletionRequest.DESCRIPTOR.fields]
    assert fields["n"] == {"t": "integer", "min": -(2**31), "max": 2**31 - 1, "min_text": "-2147483648",
                           "max_text": "2147483647"}  # fmt: skip
    assert fields["stop"] == {"t": "any"}  # google.protobuf.Value: any JSON
    assert dict(fields["messages"]["items"]["fields"])["tool_calls"]["t"] == "array"
    assert fields["logit_bias"]["t"] == "map"
