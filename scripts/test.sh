#!/usr/bin/env bash
# Install (idempotent), then lint and run the whole test suite: unit tests, then integration tests that start the
# real `chatgen serve` (vLLM on the embedded model + Envoy) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${CHATGEN_VENV:-.venv}
"$VENV/bin/ruff" check service tests benchmarks
"$VENV/bin/ruff" format --check service tests benchmarks
"$VENV/bin/mypy"  # service/chatgen and benchmarks, configured in pyproject.toml
exec "$VENV/bin/python" -m pytest -v -p no:cacheprovider "$@"
