"""The last step's scheduler statistics of vLLM's engine core, for the server's load reports
(transport.load_report): a stat logger beside vLLM's own (its Prometheus logger keeps the same figures for
/metrics). Imported only with the vLLM engine."""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase


class SchedulerWatch:
    """What the engine core reported last; None before its first step, or with --disable-log-stats (vLLM then
    sends no statistics)."""

    def __init__(self) -> None:
        self.kv_cache_usage: float | None = None

    def logger(self, vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        """vLLM's per-engine stat logger factory."""
        return _Recorder(self)


class _Recorder(StatLoggerBase):
    def __init__(self, watch: SchedulerWatch) -> None:
        self._watch = watch

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self._watch.kv_cache_usage = float(scheduler_stats.kv_cache_usage)

    def log_engine_initialized(self) -> None:
        pass
