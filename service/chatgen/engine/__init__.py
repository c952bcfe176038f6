"""Token generation behind one interface (`Engine`), with a vLLM and a transformers implementation."""

from chatgen.engine.base import (
    Adapter,
    AdapterNotFound,
    Engine,
    EngineError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    SamplingOptions,
    TokenLogprob,
)

__all__ = [
    "Adapter",
    "AdapterNotFound",
    "Engine",
    "EngineError",
    "EngineOutput",
    "EngineRejectedRequest",
    "EngineRequest",
    "SamplingOptions",
    "TokenLogprob",
]
