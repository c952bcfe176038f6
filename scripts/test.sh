#!/usr/bin/env bash
# Install (idempotent), lint (ruff, mypy, buf), then run the whole test suite: unit tests, then integration tests
# that start the real `chatgen serve` (vLLM on the embedded model + Envoy) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${CHATGEN_VENV:-.venv}
"$VENV/bin/ruff" check service tests benchmarks
"$VENV/bin/ruff" format --check service tests benchmarks
"$VENV/bin/mypy"  # service/chatgen and benchmarks, configured in pyproject.toml
# The contract: buf lint, and no breaking change against the released one (protos/released).
bash scripts/buf.sh lint
bash scripts/buf.sh breaking
exec "$VENV/bin/python" -m pytest -v -p no:cacheprovider "$@"
