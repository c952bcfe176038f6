"""vLLM's request extensions that chatgen does not serve (yet), by request message. A REST body that sends one
gets 400 `unsupported_parameter` naming it, never a 200 that quietly ignored it: a client that asked for
constrained output must not get unconstrained text. The gateway's Lua filter refuses them (json_types.lua, from
request_types.json); gRPC callers cannot send them: the contract has no such fields. An extension leaves this
table when it is served, as a field of the request message."""

from __future__ import annotations

_STRUCTURED = "use structured_outputs (or response_format)"
# Sampling and output extensions vLLM takes on both chat completions and completions.
_SAMPLING: dict[str, str] = {
    "use_beam_search": "beam search is not served",
    "length_penalty": "length_penalty applies to beam search, which is not served",
    "include_stop_str_in_output": "stop strings are never included in the output",
    "spaces_between_special_tokens": "spaces_between_special_tokens is not served",
    "bad_words": "bad_words is not served",
    "guided_json": f"guided_json is not served (vLLM removed it); {_STRUCTURED}",
    "guided_regex": f"guided_regex is not served (vLLM removed it); {_STRUCTURED}",
    "guided_choice": f"guided_choice is not served (vLLM removed it); {_STRUCTURED}",
    "guided_grammar": f"guided_grammar is not served (vLLM removed it); {_STRUCTURED}",
    "guided_decoding_backend": "guided decoding is not served; the server picks its grammar backend",
    "guided_whitespace_pattern": "guided_whitespace_pattern is not served",
    "logits_processors": "logits_processors are not served",
    "kv_transfer_params": "KV transfer is not served",
    "vllm_xargs": "vllm_xargs is not served",
    "mm_processor_kwargs": "the served models are text-only",
}
UNSERVED: dict[str, dict[str, str]] = {
    "chatgen.v1.CreateChatCompletionRequest": {
        **_SAMPLING,
        "documents": "documents for the chat template are not served",
        "chat_template": "a per-request chat_template is not served; the model's own template renders",
    },
    "chatgen.v1.CreateCompletionRequest": {
        **_SAMPLING,
        "add_special_tokens": "add_special_tokens is not served; prompts get the tokenizer's special tokens",
        "prompt_embeds": "prompt_embeds is not served",
        "suffix": "suffix (fill-in-the-middle) is not served",
    },
    "chatgen.v1.LoadLoraAdapterRequest": {
        "is_3d_lora_weight": "is_3d_lora_weight (fused MoE adapter weights) is not served",
    },
    "chatgen.v1.UnloadLoraAdapterRequest": {
        "lora_int_id": "lora_int_id is not served: adapters are unloaded by lora_name",
    },
}


# Options inside a served field that are not served (both request messages have the field).
NESTED: dict[str, dict[str, str]] = {
    "structured_outputs": {
        "disable_any_whitespace": "disable_any_whitespace is not served; JSON may have whitespace between tokens",
        "disable_additional_properties": "disable_additional_properties is not served; set additionalProperties",
        "whitespace_pattern": "whitespace_pattern is not served",
        "structural_tag": "structural tags are not served",
    }
}
