"""Every vLLM engine argument, reachable from `chatgen serve`: vLLM's own parser builds the `AsyncEngineArgs`.

chatgen declares only the flags it owns (model, name, context length, dtype, batch size via --max-running);
anything else on the `chatgen serve` command line is handed to `AsyncEngineArgs.add_cli_args`' parser, so every
flag `vllm serve` takes for its engine works here with the same spelling, defaults and validation, and new vLLM
releases add theirs without a chatgen change. chatgen's defaults go first on the vLLM command line, the user's
flags after them, so the user's win (argparse keeps the last value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# GiB of KV cache chatgen gives vLLM's CPU backend unless VLLM_CPU_KVCACHE_SPACE says otherwise (vLLM's own default
# is sized for big servers); ignored on GPUs, where --gpu-memory-utilization sizes it.
CPU_KV_CACHE_GIB = 2


def cpu_kv_cache_env(environ: dict[str, str], gib: int = CPU_KV_CACHE_GIB) -> dict[str, str]:
    """`environ` with VLLM_CPU_KVCACHE_SPACE set to `gib` where it was not set."""
    return {**environ, "VLLM_CPU_KVCACHE_SPACE": environ.get("VLLM_CPU_KVCACHE_SPACE", str(gib))}


# vLLM flags that chatgen owns under a name of its own (or the same name): giving them as vLLM flags would be
# ambiguous, so they are refused with the chatgen flag to use instead.
OWNED_BY_CHATGEN: dict[str, str] = {
    "--model": "--model",
    "--served-model-name": "--served-model-name",
    "--max-model-len": "--max-model-len",
    "--dtype": "--dtype",
    "--max-num-seqs": "--max-running",
    "--reasoning-parser": "--reasoning-parser",
    "--log-level": "--log-level",
}


@dataclass(frozen=True)
class EngineDefaults:
    """What chatgen sets before the user's own vLLM flags."""

    model: str
    served_model_name: str
    max_model_len: int | None
    dtype: str
    max_num_seqs: int | None
    on_cpu: bool
    seed: int = 0

    def argv(self) -> list[str]:
        args = ["--model", self.model, "--served-model-name", self.served_model_name, "--dtype", self.resolved_dtype()]
        args += ["--seed", str(self.seed)]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        # Chat traffic repeats system prompts and histories; long prompts must not stall running streams.
        args += ["--enable-prefix-caching", "--enable-chunked-prefill"]
        if self.on_cpu:
            # vLLM-CPU's compiled mode spends minutes compiling at start for no gain on a small model.
            args += ["--enforce-eager"]
        return args

    def resolved_dtype(self) -> str:
        if self.dtype == "auto" and self.on_cpu:
            # Measured here (AVX2, no native bf16 matmul): float32 decodes ~3x faster than bfloat16.
            return "float32"
        return self.dtype


def engine_parser() -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="chatgen serve",
        description="vLLM engine arguments: give them to `chatgen serve` after chatgen's own flags.",
        add_help=False,
    )
    return AsyncEngineArgs.add_cli_args(parser)


def engine_args(defaults: EngineDefaults, user_argv: Sequence[str]) -> Any:
    """vLLM's `AsyncEngineArgs` from chatgen's defaults and the user's vLLM flags; SystemExit on a bad flag."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    for arg in user_argv:
        flag = arg.split("=", 1)[0].replace("_", "-")
        if flag in OWNED_BY_CHATGEN:
            raise SystemExit(f"chatgen serve: give {OWNED_BY_CHATGEN[flag]} as chatgen's flag, not as a vLLM flag")
    parser = engine_parser()
    try:
        namespace = parser.parse_args([*defaults.argv(), *user_argv])
    except SystemExit:
        raise SystemExit(
            f"chatgen serve: not a chatgen or vLLM engine flag among {' '.join(user_argv)!r} "
            "(chatgen's: `chatgen serve --help`; vLLM's: `chatgen serve --help-engine`)"
        ) from None
    return AsyncEngineArgs.from_cli_args(namespace)


def engine_help() -> str:
    return str(engine_parser().format_help())
