"""CHATGEN_<FLAG> environment variables: each flag's default can come from the environment (a Kubernetes
ConfigMap configures the server and its gateway alike); a flag on the command line still wins."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def environment_names(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The CHATGEN_<FLAG> variables `chatgen <command>` reads (CHATGEN_API_KEYS aside)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {_variable(a) for a in sub.choices[command]._actions if _from_environment(a)}


def _variable(action: argparse.Action) -> str:
    return "CHATGEN_" + action.dest.upper()


def _from_environment(action: argparse.Action) -> bool:
    # API keys have their own variable, CHATGEN_API_KEYS (a list).
    return bool(action.option_strings) and action.dest not in ("help", "api_key")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def environment_defaults(command: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """CHATGEN_<FLAG> in the environment is that flag's default; a flag on the command line still wins."""
    defaults: dict[str, object] = {}
    for action in command._actions:
        name = _variable(action)
        if not _from_environment(action) or name not in environ:
            continue
        value = environ[name].strip()
        try:
            if isinstance(action, argparse._StoreTrueAction):
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(value)
                defaults[action.dest] = value.lower() in _TRUE
            else:
                converted = action.type(value) if callable(action.type) else value
                if action.choices is not None and converted not in action.choices:
                    raise ValueError(value)
                defaults[action.dest] = converted
        except ValueError:
            command.error(f"{name}={environ[name]!r} is not a valid value for {action.option_strings[0]}")
    command.set_defaults(**defaults)
