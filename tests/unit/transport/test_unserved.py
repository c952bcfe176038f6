"""transport.unserved: vLLM's extensions that are not served are a 400 unsupported_parameter, never ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatgen.errors import ApiError, Failure
from chatgen.transport import rest
from chatgen.transport.unserved import NESTED, UNSERVED
from chatgen.v1 import chatgen_pb2 as pb

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_no_unserved_extension_is_a_field_of_the_contract() -> None:
    # A field the contract has is served (and checked by the validation layer), so it cannot be listed here.
    for full_name, fields in UNSERVED.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[full_name.removeprefix("chatgen.v1.")]
        assert not set(fields) & set(descriptor.fields_by_name), full_name


@pytest.mark.parametrize("key", ["guided_json", "guided_regex", "use_beam_search", "documents", "chat_template"])
def test_chat_extensions_are_refused_naming_the_field(key: str) -> None:
    with pytest.raises(ApiError) as err:
        rest.parse(json.dumps({**CHAT, key: {"type": "object"}}).encode(), pb.CreateChatCompletionRequest)
    assert (err.value.failure, err.value.param) == (Failure.UNSUPPORTED, key)
    assert key in err.value.message


def test_completion_extensions_are_refused_and_null_means_not_sent() -> None:
    body = {"model": "m", "prompt": "p", "suffix": "s"}
    with pytest.raises(ApiError) as err:
        rest.parse(json.dumps(body).encode(), pb.CreateCompletionRequest)
    assert err.value.param == "suffix"
    parsed = rest.parse(json.dumps({**body, "suffix": None}).encode(), pb.CreateCompletionRequest)
    assert parsed.prompt.string_value == "p"


def test_other_unknown_keys_are_still_ignored() -> None:
    parsed = rest.parse(json.dumps({**CHAT, "x_custom": 1}).encode(), pb.CreateChatCompletionRequest)
    assert parsed.messages[0].role == "user"


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


def test_unserved_options_inside_structured_outputs_are_refused() -> None:
    body = {**CHAT, "structured_outputs": {"json": {"type": "object"}, "disable_any_whitespace": True}}
    with pytest.raises(ApiError) as err:
        rest.parse(json.dumps(body).encode(), pb.CreateChatCompletionRequest)
    assert (err.value.failure, err.value.param) == (Failure.UNSUPPORTED, "structured_outputs.disable_any_whitespace")
    served = {**CHAT, "structured_outputs": {"regex": "a+", "structural_tag": None}}
    assert rest.parse(json.dumps(served).encode(), pb.CreateChatCompletionRequest).structured_outputs.regex == "a+"
    # Each is documented with its reason.
    docs = (Path(__file__).parents[3] / "docs" / "api.md").read_text()
    for name, reason in NESTED["structured_outputs"].items():
        assert f"`structured_outputs.{name}`" in docs and reason in docs, name
