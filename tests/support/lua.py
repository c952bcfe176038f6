"""The gateway's Lua modules run under LuaJIT in this process (lupa): the body check (gateway/json_types.lua over
gateway/dkjson.lua, on the request types chatgen renders) and the reply rewrites (gateway/replies.lua), the same
code Envoy's Lua filter runs, without Envoy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lupa import luajit21

from chatgen.gateway.request_types import request_types

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


@dataclass(frozen=True)
class Refusal:
    kind: str  # "invalid" or "unsupported"
    message: str
    param: str | None


class BodyCheck:
    def __init__(self, types: dict[str, Any] | None = None) -> None:
        self._lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
        self._lua.execute(f'package.path = "{GATEWAY}/?.lua;" .. package.path')
        self._json = self._lua.eval('require("dkjson")')
        self._module = self._lua.eval('require("json_types")')
        decoded = self._json.decode(json.dumps(types or request_types()), 1, self._json.null)
        self._types = decoded[0]

    def message_for(self, path: str, body: Any) -> str | None:
        decoded, _ = self._module.decode(self._json, _text(body))
        return None if decoded is None else self._module.message_for(self._json, self._types, path, decoded)

    def check(self, message: str, body: Any) -> Refusal | None:
        """`message`: a request message's full name; `body`: JSON text, or a value to write as JSON."""
        decoded, problem = self._module.decode(self._json, _text(body))
        if decoded is None:
            return Refusal("invalid", problem, None)
        failure = self._module.check(self._json, self._types, message, decoded)
        if failure is None:
            return None
        return Refusal(failure.kind, failure.message, failure.param)


def _text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body)


class Replies:
    """gateway/replies.lua: what the gateway changes in the JSON the transcoder renders."""

    def __init__(self) -> None:
        lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
        lua.execute(f'package.path = "{GATEWAY}/?.lua;" .. package.path')
        self._module = lua.eval('require("replies")')

    def json(self, text: str) -> str:
        return str(self._module.json(text))

    def events(self, text: str) -> str:
        return str(self._module.events(text))

    def named(self, text: str) -> str:
        return str(self._module.named(text))
