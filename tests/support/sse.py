"""Reading named Server-Sent Events (the Messages and Responses streams) as a client sees them on the wire."""

from __future__ import annotations

import json
from typing import Any


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Raw SSE text -> (event name, data JSON) pairs; every event must have both, the name matching data.type."""
    out = []
    for frame in text.strip().split("\n\n"):
        lines = frame.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        out.append((name, data))
    return out
