"""API keys: where they come from, and how a presented key is checked (the gRPC services' interceptor and the
metrics endpoint use the same check)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

ENV_VAR = "CHATGEN_API_KEYS"


def load_keys(cli_keys: Iterable[str], key_file: str | None) -> list[str]:
    """Keys from --api-key (repeatable), the CHATGEN_API_KEYS environment variable (comma-separated) and a key
    file (one per line, # comments); no keys at all means authentication is off."""
    keys = [k.strip() for k in cli_keys]
    keys += os.environ.get(ENV_VAR, "").split(",")
    if key_file:
        for line in Path(key_file).read_text().splitlines():
            keys.append(line.split("#", 1)[0])
    return sorted({k.strip() for k in keys if k.strip()})


def allowed(keys: list[bytes], presented: str) -> bool:
    token = presented.encode()
    # Compare against every key (no early exit), so timing does not tell which prefix matched.
    return any([hmac.compare_digest(token, key) for key in keys])
