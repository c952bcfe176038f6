"""vLLM's LoRA adapter requests -> validated values (as chat.py does for chat requests)."""

from __future__ import annotations

from dataclasses import dataclass

from chatgen.chat.validation import text
from chatgen.errors import invalid
from chatgen.v1 import chatgen_pb2 as pb


@dataclass(frozen=True)
class AdapterLoad:
    name: str
    path: str
    # New weights under a name already loaded, instead of refusing the name.
    in_place: bool


def validate_load(request: pb.LoadLoraAdapterRequest) -> AdapterLoad:
    text.check_strings(request)
    if not request.lora_name or not request.lora_path:
        # vLLM's own words.
        missing = "lora_name" if not request.lora_name else "lora_path"
        raise invalid("Both 'lora_name' and 'lora_path' must be provided.", missing)
    return AdapterLoad(request.lora_name, request.lora_path, request.load_inplace)


def validate_unload(request: pb.UnloadLoraAdapterRequest) -> str:
    text.check_strings(request)
    if not request.lora_name:
        raise invalid("'lora_name' needs to be provided to unload a LoRA adapter.", "lora_name")
    return request.lora_name
