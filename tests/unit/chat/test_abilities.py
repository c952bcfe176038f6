from __future__ import annotations

from types import SimpleNamespace

from chatgen.chat.abilities import model_abilities, template_variables_used


def test_template_variables_are_found_by_parsing() -> None:
    template = "{% set x = 1 %}{% for m in messages %}{{ m.content }}{% endfor %}{% if enable_thinking %}T{% endif %}"
    assert template_variables_used(template) == {"messages", "enable_thinking"}
    # A mention inside a string literal is not a variable.
    assert "thinking" not in template_variables_used("{{ 'thinking' }}{{ messages }}")


def test_abilities_follow_what_the_model_has() -> None:
    plain = SimpleNamespace(chat_template=None)
    chat = SimpleNamespace(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    hybrid = SimpleNamespace(chat_template="{{ messages }}{% if thinking %}<think>{% endif %}")
    assert model_abilities(plain, reasoning_parser=True) == ["generate"]
    assert model_abilities(chat, reasoning_parser=False) == ["generate", "chat"]
    assert model_abilities(chat, reasoning_parser=True) == ["generate", "chat", "reasoning"]
    assert model_abilities(hybrid, reasoning_parser=True) == ["generate", "chat", "reasoning", "hybrid"]
