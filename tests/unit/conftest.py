from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatgen.chat.admission import AdmissionLimits
from chatgen.engine.factory import ModelChoice, SimulatorTiming
from chatgen.engine.hf_engine import HfEngine, HfSettings
from chatgen.settings import EngineSettings, ServeSettings

# The served name the unit tests' engine answers to.
HF_NAME = "smol"


@pytest.fixture(scope="session")
async def hf_engine(model_dir: Path) -> AsyncIterator[HfEngine]:
    """The transformers engine on the real embedded model, shared by the unit tests that need an engine."""
    engine = HfEngine(HfSettings(str(model_dir), HF_NAME, max_model_len=512))
    await engine.start()
    yield engine
    await engine.shutdown()


def in_process_settings(engine: HfEngine, **fields: Any) -> ServeSettings:
    """`chatgen serve`'s settings for a gRPC server in this process, on a free port, on the unit tests' engine
    (chatgen.app.build_service wires it as it wires a real one)."""
    model = EngineSettings("hf", ModelChoice(engine.model.path, HF_NAME), 512, "auto", SimulatorTiming())
    defaults: dict[str, Any] = {"limits": AdmissionLimits(), "max_request_bytes": 16 * 1024 * 1024, "gateway": None}
    return ServeSettings(engine=model, host="127.0.0.1", grpc_port=0, **{**defaults, **fields})
