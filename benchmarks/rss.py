"""Memory of a server's processes over time: RSS of each process sampled at an interval, and each one's slope.

A leak shows as a steady slope once the server is warm (allocator pools, caches and compiled graphs grow in the
first minutes, then level off), so the slope is fitted (least squares) over the samples after a warm-up share of
the run, and reported per process: chatgen itself, Envoy, the engine core and its workers, the grammar worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import psutil


def role(process: psutil.Process, root_pid: int) -> str:
    """What the process is to chatgen, from its name and command line (vLLM retitles its processes VLLM::…)."""
    if process.pid == root_pid:
        return "chatgen"
    name = process.name()
    cmdline = " ".join(process.cmdline())
    if "envoy" in name or "envoy" in cmdline.split(" ", 1)[0]:
        return "envoy"
    if name.startswith("VLLM") or cmdline.startswith("VLLM"):
        return cmdline.split(" ", 1)[0] or name
    if "resource_tracker" in cmdline:
        return "resource-tracker"
    if "multiprocessing" in cmdline:
        return "grammar-worker"
    return name


@dataclass
class Series:
    role: str
    pid: int
    times_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)


@dataclass
class Trend:
    role: str
    pid: int
    samples: int
    first_mib: float
    last_mib: float
    max_mib: float
    slope_mib_per_min: float  # after the warm-up; NaN with fewer than 3 samples there


class RssSampler:
    """Samples every process under `root_pid` (itself included) every `interval_s` until stopped."""

    def __init__(self, root_pid: int, interval_s: float) -> None:
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.series: dict[int, Series] = {}
        self._start = time.monotonic()

    def sample(self) -> None:
        now = time.monotonic() - self._start
        root = psutil.Process(self.root_pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                rss = process.memory_info().rss / 2**20
                series = self.series.get(process.pid) or self.series.setdefault(
                    process.pid, Series(role(process, self.root_pid), process.pid)
                )
                series.times_s.append(round(now, 1))
                series.rss_mib.append(round(rss, 1))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def trends(self, warmup_share: float) -> list[Trend]:
        return [trend(s, warmup_share) for s in self.series.values()]


def trend(series: Series, warmup_share: float) -> Trend:
    end = series.times_s[-1]
    start = series.times_s[0] + warmup_share * (end - series.times_s[0])
    kept = [(t, r) for t, r in zip(series.times_s, series.rss_mib, strict=True) if t >= start]
    slope = float("nan")
    if len(kept) >= 3 and kept[-1][0] > kept[0][0]:
        times, rss = zip(*kept, strict=True)
        slope = statistics.linear_regression(times, rss).slope * 60
    return Trend(
        role=series.role,
        pid=series.pid,
        samples=len(series.rss_mib),
        first_mib=series.rss_mib[0],
        last_mib=series.rss_mib[-1],
        max_mib=max(series.rss_mib),
        slope_mib_per_min=round(slope, 3),
    )
