"""The real Envoy as a checker of rendered configs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from chatgen.gateway import envoy_binary


def assert_envoy_accepts(config: Path, cwd: Path | None = None) -> None:
    """The real Envoy's `--mode validate`: the config loads (filters, Lua, descriptor, TLS files; relative paths
    from `cwd`)."""
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
