"""What a served model can do, derived from what it really has (Xinference's `model_ability`)."""

from __future__ import annotations

from typing import Any

# Template variables that switch thinking on and off (Qwen: enable_thinking; some DeepSeek templates: thinking).
THINKING_SWITCHES = frozenset({"enable_thinking", "thinking"})


def template_variables_used(chat_template: str) -> set[str]:
    """Variables a Jinja chat template reads without defining them, by parsing it (not by text search)."""
    import jinja2
    import jinja2.meta

    return set(jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(chat_template)))


def model_abilities(tokenizer: Any, reasoning_parser: bool, tool_parser: bool = False) -> list[str]:
    abilities = ["generate"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        abilities.append("chat")
        if reasoning_parser:
            abilities.append("reasoning")
            if template_variables_used(template) & THINKING_SWITCHES:
                abilities.append("hybrid")
        if tool_parser and "tools" in template_variables_used(template):
            abilities.append("tools")
    return abilities
