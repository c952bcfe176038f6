"""The LoRA adapters a server runs over its model, by the name requests send as `model` (vLLM's
OpenAIServingModels): loaded at start (--lora-modules) or at runtime (/v1/load_lora_adapter), each with an engine
id of its own that is never reused for other weights.

Several frontends over one engine (chatgen.frontends) each keep their own names, so a runtime load through one
would not reach the others: there the names are fixed once the server is up (vLLM likewise refuses runtime LoRA
updates with --api-server-count above 1). Every frontend loads the same --lora-modules in the same order, so each
name gets the same engine id everywhere, and the engine core loads each adapter once (a second add of an id it
holds is a no-op)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from chatgen.chat.validation.adapters import AdapterLoad
from chatgen.engine import Adapter, AdapterNotFound, Engine, EngineRejectedRequest
from chatgen.errors import ApiError, Failure, invalid, shown

__all__ = ["Adapter", "AdapterModule", "Adapters"]


@dataclass(frozen=True)
class AdapterModule:
    """An adapter to load at start: --lora-modules name=path."""

    name: str
    path: str


class Adapters:
    def __init__(self, engine: Engine, base_model: str) -> None:
        self._engine = engine
        self._base = base_model
        self._by_name: dict[str, Adapter] = {}
        self._ids = itertools.count(1)
        # Why runtime loads and unloads are refused (None: they are served); set by fix().
        self._fixed: str | None = None
        # One load or unload at a time: a name is checked and taken in one step, and ids follow load order.
        self._lock = asyncio.Lock()

    @property
    def by_name(self) -> Mapping[str, Adapter]:
        """The adapters loaded now (a live view: request validation reads it)."""
        return self._by_name

    def fix(self, why: str) -> None:
        """From now on the names are those loaded so far: loads and unloads are refused, saying `why`."""
        self._fixed = why

    async def load(self, load: AdapterLoad) -> Adapter:
        async with self._lock:
            self._refuse_if_fixed("lora_name")
            if not self._engine.max_adapters:
                raise invalid(
                    "LoRA adapters are off on this server: start it on the vLLM engine with --enable-lora",
                    "lora_name",
                )
            if load.name == self._base:
                raise invalid(f"The lora adapter {shown(load.name)} conflicts with a served base model.", "lora_name")
            loaded = self._by_name.get(load.name)
            if loaded is not None and not load.in_place:
                raise invalid(
                    f"The lora adapter {shown(load.name)} has already been loaded. If you want to load the adapter in "
                    "place, set 'load_inplace' to True.",
                    "lora_name",
                )
            adapter = Adapter(load.name, loaded.id if loaded is not None else next(self._ids), load.path)
            try:
                await self._engine.load_adapter(adapter, in_place=loaded is not None)
            except AdapterNotFound as exc:
                raise ApiError(Failure.ADAPTER_NOT_FOUND, exc.message, "lora_path") from exc
            except EngineRejectedRequest as exc:
                raise invalid(f"Loading lora {load.name} failed: {exc.message}", "lora_path") from exc
            self._by_name[load.name] = adapter
            return adapter

    async def unload(self, name: str) -> None:
        """Requests can no longer name it; the engine drops its weights when it needs the room (vLLM's LRU)."""
        async with self._lock:
            self._refuse_if_fixed("lora_name")
            if self._by_name.pop(name, None) is None:
                message = f"The lora adapter {shown(name)} cannot be found."
                raise ApiError(Failure.ADAPTER_NOT_FOUND, message, "lora_name")

    def _refuse_if_fixed(self, param: str) -> None:
        if self._fixed is not None:
            # What this deployment cannot do, as for any unsupported request: 400 (never a 5xx, see errors).
            message = f"LoRA adapters cannot be loaded or unloaded at runtime {self._fixed}"
            raise ApiError(Failure.UNSUPPORTED, message, param)
