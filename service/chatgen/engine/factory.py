"""Pick and build an engine for a model."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatgen.embedded_model import EMBEDDED_MODEL_NAME, embedded_model_dir
from chatgen.engine.base import Engine

log = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "hf", "simulator")


@dataclass(frozen=True)
class ModelChoice:
    path: str
    served_name: str


@dataclass(frozen=True)
class SimulatorTiming:
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    output_tokens: int = 64


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


def create_engine(
    kind: str,
    model: ModelChoice,
    max_model_len: int | None,
    dtype: str,
    max_num_seqs: int | None = None,
    simulator: SimulatorTiming | None = None,
    engine_argv: tuple[str, ...] = (),
    client: Any = None,
) -> Engine:
    """`max_num_seqs`: how many sequences vLLM batches at once (admission control admits no more than that).
    `simulator`: the token simulator's timing (load tests only). `engine_argv`: vLLM engine flags. `client`: a
    vllm_engine.EngineClient, for a frontend of an engine core that another process started."""
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        log.info("engine 'auto' resolved to '%s'", kind)
    if engine_argv and kind != "vllm":
        raise SystemExit(f"chatgen serve: unknown flags {' '.join(engine_argv)!r} (vLLM engine flags need vLLM)")
    if kind == "vllm":
        from chatgen.engine.vllm_engine import VllmEngine, VllmSettings

        return VllmEngine(
            VllmSettings(
                model.path,
                model.served_name,
                max_model_len=max_model_len,
                dtype=dtype,
                max_num_seqs=max_num_seqs,
                engine_argv=engine_argv,
                client=client,
            )
        )
    if kind == "hf":
        from chatgen.engine.hf_engine import HfEngine, HfSettings

        return HfEngine(HfSettings(model.path, model.served_name, max_model_len=max_model_len, dtype=dtype))
    if kind == "simulator":
        from chatgen.engine.simulator import SimulatorSettings, TokenSimulatorEngine

        timing = simulator or SimulatorTiming()
        return TokenSimulatorEngine(
            SimulatorSettings(
                model.path,
                model.served_name,
                max_model_len=max_model_len or 2048,
                ttft_ms=timing.ttft_ms,
                itl_ms=timing.itl_ms,
                output_tokens=timing.output_tokens,
            )
        )
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
