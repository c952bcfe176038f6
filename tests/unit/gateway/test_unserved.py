"""gateway.unserved: vLLM's extensions that are not served are a 400 unsupported_parameter, never ignored (the
gateway's Lua check refuses them: run here under LuaJIT, tests/support/lua.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatgen.gateway.unserved import NESTED, UNSERVED
from chatgen.v1 import chatgen_pb2 as pb
from tests.support.lua import BodyCheck

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CHAT_REQUEST = pb.CreateChatCompletionRequest.DESCRIPTOR.full_name
COMPLETION_REQUEST = pb.CreateCompletionRequest.DESCRIPTOR.full_name


@pytest.fixture(scope="module")
def lua() -> BodyCheck:
    return BodyCheck()


def test_no_unserved_extension_is_a_field_of_the_contract() -> None:
    # A field the contract has is served (and checked by the validation layer), so it cannot be listed here.
    for full_name, fields in UNSERVED.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[full_name.removeprefix("chatgen.v1.")]
        assert not set(fields) & set(descriptor.fields_by_name), full_name


@pytest.mark.parametrize("key", ["guided_json", "guided_regex", "use_beam_search", "documents", "chat_template"])
def test_chat_extensions_are_refused_naming_the_field(lua: BodyCheck, key: str) -> None:
    refusal = lua.check(CHAT_REQUEST, {**CHAT, key: {"type": "object"}})
    assert refusal is not None and (refusal.kind, refusal.param) == ("unsupported", key)
    assert refusal.message == f"'{key}': {UNSERVED[CHAT_REQUEST][key]}"


def test_completion_extensions_are_refused_and_null_means_not_sent(lua: BodyCheck) -> None:
    body = {"model": "m", "prompt": "p", "suffix": "s"}
    refusal = lua.check(COMPLETION_REQUEST, body)
    assert refusal is not None and refusal.param == "suffix"
    assert lua.check(COMPLETION_REQUEST, {**body, "suffix": None}) is None


def test_other_unknown_keys_are_still_ignored(lua: BodyCheck) -> None:
    assert lua.check(CHAT_REQUEST, {**CHAT, "x_custom": 1}) is None


def test_the_api_docs_list_each_unserved_extension_with_its_reason() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "api.md").read_text()
    for full_name, fields in UNSERVED.items():
        if not full_name.endswith(("CreateChatCompletionRequest", "CreateCompletionRequest")):
            # The adapter endpoints' rows: the key and its reason.
            assert all(f"`{key}`" in docs and reason in docs for key, reason in fields.items()), full_name
            continue
        column = 2 if full_name.endswith("CreateChatCompletionRequest") else 3
        for key, reason in fields.items():
            rows = [line.split(" | ") for line in docs.splitlines() if line.startswith(f"| `{key}` |")]
            assert len(rows) == 1, key
            assert rows[0][column - 1] == "unsupported" and reason in rows[0][3], (key, rows[0])
    # And nothing the server serves is listed as unsupported.
    for line in docs.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) == 4 and "unsupported" in cells[1:3]:
            key = cells[0].removeprefix("| `").removesuffix("`")
            for column, full_name in ((1, "CreateChatCompletionRequest"), (2, "CreateCompletionRequest")):
                if cells[column] == "unsupported":
                    assert key in UNSERVED[f"chatgen.v1.{full_name}"], (key, full_name)


def test_unserved_options_inside_structured_outputs_are_refused(lua: BodyCheck) -> None:
    body = {**CHAT, "structured_outputs": {"json": {"type": "object"}, "disable_any_whitespace": True}}
    refusal = lua.check(CHAT_REQUEST, body)
    assert refusal is not None
    assert (refusal.kind, refusal.param) == ("unsupported", "structured_outputs.disable_any_whitespace")
    served = {**CHAT, "structured_outputs": {"regex": "a+", "structural_tag": None}}
    assert lua.check(CHAT_REQUEST, served) is None
    # Each is documented with its reason.
    docs = (Path(__file__).parents[3] / "docs" / "api.md").read_text()
    for name, reason in NESTED["structured_outputs"].items():
        assert f"`structured_outputs.{name}`" in docs and reason in docs, name
