"""vLLM engine flags on `chatgen serve`: vLLM's own parser, chatgen's defaults first, the user's flags winning."""

from __future__ import annotations

import pytest

from chatgen.cli import build_parser
from chatgen.engine.vllm_args import EngineDefaults, engine_args, engine_help

DEFAULTS = EngineDefaults(
    model="/models/m", served_model_name="m", max_model_len=2048, dtype="auto", max_num_seqs=32, on_cpu=True
)


def test_chatgen_defaults_reach_vllm() -> None:
    args = engine_args(DEFAULTS, ())
    assert (args.model, args.served_model_name, args.max_model_len) == ("/models/m", ["m"], 2048)
    assert args.dtype == "float32"  # auto on a CPU
    assert args.max_num_seqs == 32
    assert args.enable_prefix_caching is True and args.enable_chunked_prefill is True
    assert args.enforce_eager is True and args.seed == 0


def test_gpu_defaults_keep_the_models_dtype_and_compiled_mode() -> None:
    args = engine_args(EngineDefaults("/m", "m", None, "auto", None, on_cpu=False), ())
    assert args.dtype == "auto" and args.enforce_eager is False and args.max_model_len is None


def test_any_vllm_flag_passes_and_the_users_flags_win() -> None:
    args = engine_args(
        DEFAULTS,
        ["--max-num-batched-tokens", "1024", "--block-size", "32", "--no-enable-prefix-caching", "--kv-cache-dtype",
         "auto", "--no-enforce-eager", "--seed=7"],
    )  # fmt: skip
    assert args.max_num_batched_tokens == 1024 and args.block_size == 32
    assert args.enable_prefix_caching is False and args.enforce_eager is False and args.seed == 7


@pytest.mark.parametrize(("flag", "ours"), [("--max-num-seqs", "--max-running"), ("--dtype", "--dtype")])
def test_flags_chatgen_owns_are_refused_with_the_right_name(flag: str, ours: str) -> None:
    with pytest.raises(SystemExit, match=ours):
        engine_args(DEFAULTS, [flag, "4"])


def test_an_unknown_flag_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="--help-engine"):
        engine_args(DEFAULTS, ["--no-such-flag"])


def test_the_cli_hands_unknown_flags_to_vllm_in_order() -> None:
    args, rest = build_parser().parse_known_args(
        ["serve", "--grpc-port", "1", "--max-num-batched-tokens", "512", "--max-running", "4", "--enable-lora"]
    )
    assert (args.grpc_port, args.max_running) == (1, 4)
    assert rest == ["--max-num-batched-tokens", "512", "--enable-lora"]


def test_help_engine_lists_vllm_flags() -> None:
    text = engine_help()
    assert "--max-num-batched-tokens" in text and "--enable-prefix-caching" in text


def test_cpu_kv_cache_size_is_chatgens_unless_the_environment_sets_it() -> None:
    from chatgen.engine.vllm_args import CPU_KV_CACHE_GIB, cpu_kv_cache_env

    assert cpu_kv_cache_env({"PATH": "/bin"}) == {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_GIB)}
    assert cpu_kv_cache_env({"VLLM_CPU_KVCACHE_SPACE": "8"})["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert cpu_kv_cache_env({}, 4)["VLLM_CPU_KVCACHE_SPACE"] == "4"
