"""--lora-modules values (chatgen.cli.settings.lora_module), in both of vLLM's forms."""

from __future__ import annotations

import pytest

from chatgen.chat.adapters import AdapterModule
from chatgen.cli.settings import lora_module


def test_name_equals_path() -> None:
    assert lora_module("sql=/adapters/sql=v2") == AdapterModule("sql", "/adapters/sql=v2")


def test_vllm_json_form() -> None:
    given = '{"name": "sql", "path": "/adapters/sql", "base_model_name": "m"}'
    assert lora_module(given) == AdapterModule("sql", "/adapters/sql")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sql", "wants name=path"),
        ("=/adapters/sql", "needs a name and a path"),
        ("sql=", "needs a name and a path"),
        ('{"name": "sql"}', "JSON modules are"),
        ('{"name": "sql", "path": 5}', "are strings"),
        ('{"name": "sql", "path": "/a", "rank": 8}', "JSON modules are"),
        ("{not json", "is not JSON"),
    ],
)
def test_malformed_values_stop_the_start(text: str, says: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        lora_module(text)
    assert says in str(stopped.value)
