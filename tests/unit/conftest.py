from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatgen.engine.hf_engine import HfEngine, HfSettings

# The served name the unit tests' engine answers to.
HF_NAME = "smol"


@pytest.fixture(scope="session")
async def hf_engine(model_dir: Path) -> AsyncIterator[HfEngine]:
    """The transformers engine on the real embedded model, shared by the unit tests that need an engine."""
    engine = HfEngine(HfSettings(str(model_dir), HF_NAME, max_model_len=512))
    await engine.start()
    yield engine
    await engine.shutdown()
