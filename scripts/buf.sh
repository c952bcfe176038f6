#!/usr/bin/env bash
# The contract's checks with buf (PyPI buf-bin), offline: the image buf reads is built by grpcio-tools' protoc from
# protos/ and the googleapis protos that googleapis-common-protos installs, so no Buf Schema Registry is needed.
#   bash scripts/buf.sh lint       buf lint (protos/buf.yaml: STANDARD + COMMENTS)
#   bash scripts/buf.sh breaking   buf breaking against the released contract, protos/released/chatgen-v1.binpb
#   bash scripts/buf.sh release    make the current contract the released one (a deliberate, reviewed change)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHATGEN_VENV:-.venv}
BUF="$VENV/bin/buf"
RELEASED=protos/released/chatgen-v1.binpb
image=$(mktemp --suffix=.binpb)
trap 'rm -f "$image"' EXIT
PYTHONPATH=service "$VENV/bin/python" -m chatgen.protogen --image "$image" >/dev/null
case "${1:-}" in
  lint) exec "$BUF" lint "$image" --path chatgen/v1/chatgen.proto --config protos/buf.yaml ;;
  breaking) exec "$BUF" breaking "$image" --against "$RELEASED" --path chatgen/v1/chatgen.proto --config protos/buf.yaml ;;
  release)
    # Without source info (comments, positions): only what the comparison reads.
    PYTHONPATH=service "$VENV/bin/python" -m chatgen.protogen --descriptor-set "$RELEASED" >/dev/null
    echo "released: $RELEASED" ;;
  *) echo "usage: bash scripts/buf.sh lint|breaking|release" >&2; exit 2 ;;
esac
