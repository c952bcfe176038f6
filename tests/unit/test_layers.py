"""Data flows one way: transport -> chat -> engine. Each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "chatgen"
# layer -> the chatgen packages it must not import.
FORBIDDEN = {
    "transport": ("chatgen.engine",),
    "chat": ("chatgen.transport", "chatgen.gateway", "chatgen.cli", "chatgen.app", "chatgen.server"),
    "engine": ("chatgen.chat", "chatgen.transport", "chatgen.gateway", "chatgen.cli", "chatgen.app"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_the_layers_below(layer: str) -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in imported(path)
        if name.startswith(FORBIDDEN[layer])
    }
    assert not offending, sorted(offending)


# The one chat module that adapts vLLM's reasoning and tool-call parsers; the rest of the chat layer is
# engine-neutral (the transformers engine serves it too) and reaches vLLM only through the engine layer.
VLLM_ADAPTER = PACKAGE / "chat" / "parsing.py"


def test_the_chat_layer_imports_vllm_only_where_it_adapts_vllms_parsers() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / "chat").rglob("*.py")
        if path != VLLM_ADAPTER
        for name in imported(path)
        if name == "vllm" or name.startswith("vllm.")
    }
    assert not offending, sorted(offending)
    assert any(name.startswith("vllm.") for name in imported(VLLM_ADAPTER))
