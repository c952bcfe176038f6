"""Pick and build an engine for a model."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from chatgen.embedded_model import EMBEDDED_MODEL_NAME, embedded_model_dir
from chatgen.engine.base import Engine

log = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "hf")


@dataclass(frozen=True)
class ModelChoice:
    path: str
    served_name: str


def resolve_model(model: str | None, served_model_name: str | None) -> ModelChoice:
    """`None` means the embedded SmolLM2 (converted on first use); otherwise an HF directory or hub id."""
    if model is None:
        return ModelChoice(str(embedded_model_dir()), served_model_name or EMBEDDED_MODEL_NAME)
    local = Path(model).expanduser()
    if local.is_dir():
        return ModelChoice(str(local.resolve()), served_model_name or local.resolve().name)
    return ModelChoice(model, served_model_name or model)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def create_engine(kind: str, model: ModelChoice, max_model_len: int | None, dtype: str) -> Engine:
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        log.info("engine 'auto' resolved to '%s'", kind)
    if kind == "vllm":
        from chatgen.engine.vllm_engine import VllmEngine, VllmSettings

        return VllmEngine(VllmSettings(model.path, model.served_name, max_model_len=max_model_len, dtype=dtype))
    if kind == "hf":
        from chatgen.engine.hf_engine import HfEngine, HfSettings

        return HfEngine(HfSettings(model.path, model.served_name, max_model_len=max_model_len, dtype=dtype))
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
