"""chat.adapters: the names a server serves adapters under, and when they are fixed (several frontends)."""

from __future__ import annotations

import pytest

from chatgen.chat.adapters import Adapters
from chatgen.chat.validation.adapters import AdapterLoad
from chatgen.engine.hf_engine import HfEngine
from chatgen.errors import ApiError, Failure


async def test_loads_need_lora_on_and_unknown_names_are_not_found(hf_engine: HfEngine) -> None:
    adapters = Adapters(hf_engine, hf_engine.model.name)
    with pytest.raises(ApiError) as off:
        await adapters.load(AdapterLoad("sql", "/adapters/sql", in_place=False))
    assert (off.value.failure, off.value.param) == (Failure.INVALID_REQUEST, "lora_name")
    assert "--enable-lora" in off.value.message
    with pytest.raises(ApiError) as unknown:
        await adapters.unload("sql")
    assert unknown.value.failure == Failure.ADAPTER_NOT_FOUND


async def test_fixed_names_refuse_loads_and_unloads_saying_why(hf_engine: HfEngine) -> None:
    adapters = Adapters(hf_engine, hf_engine.model.name)
    adapters.fix("with --frontends 2: name them at start")
    for attempt in (adapters.load(AdapterLoad("sql", "/adapters/sql", in_place=False)), adapters.unload("sql")):
        with pytest.raises(ApiError) as refused:
            await attempt
        assert (refused.value.failure, refused.value.param) == (Failure.UNSUPPORTED, "lora_name")
        assert refused.value.message == (
            "LoRA adapters cannot be loaded or unloaded at runtime with --frontends 2: name them at start"
        )
    assert dict(adapters.by_name) == {}
