"""The benchmark's report: per-level results, paired ratios with confidence intervals, the table and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = {
    "vllm": "a",
    "grpc": "b",
    "rest": "c",
    "smg": "d",
    "engine": "e",
    "hf": "f",
    "transformers": "g",
    "raw-rest": "h",
    "grpc-coalesced": "i",
    "grpc-frontends": "j",
    "vllm-api-servers": "k",
}
LABELS = {
    "vllm": "vllm serve",
    "grpc": "chatgen gRPC",
    "rest": "chatgen REST",
    "smg": "SMG",
    "engine": "AsyncLLM in-process",
    "hf": "chatgen gRPC, hf engine",
    "transformers": "transformers generate",
    "raw-rest": "chatgen REST, bare client",
    "grpc-coalesced": "chatgen gRPC, coalesced",
    "grpc-frontends": "chatgen gRPC, N frontends",
    "vllm-api-servers": "vllm serve, N API servers",
}
RATIOS = [
    ("b", "a"), ("b", "d"), ("c", "a"), ("c", "b"), ("c", "d"), ("b", "e"), ("f", "g"), ("h", "b"), ("i", "b"),
    ("j", "b"), ("k", "a"), ("j", "k"),
]  # fmt: skip
# TTFT p50 ratios (below 1: the first target answers sooner): chatgen against the two baselines, REST against gRPC,
# coalesced streams against one chunk per token, N frontends against one and against vLLM's N API servers.
TTFT_RATIOS = [("b", "a"), ("b", "d"), ("c", "b"), ("i", "b"), ("j", "b"), ("j", "k")]

# Targets measured together take turns in rounds of this many requests per client (see Sweep.take_turns).
# Fewer paired rounds than this give no confidence interval for a ratio.
MIN_ROUNDS_FOR_CI = 3


@dataclass
class Level:
    target: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    requests_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    itl_p50_ms: float = math.nan
    itl_p99_ms: float = math.nan
    # Output tokens/s and TTFT p50 (ms) of each round, in order (the samples a ratio's confidence interval is
    # built from).
    rounds: list[float] = field(default_factory=list)
    round_ttft_p50_ms: list[float] = field(default_factory=list)
    # Requests sent again on a new connection because the server had closed the kept-alive one they went out on
    # (bare HTTP client): not errors, and not timed apart (the resend is part of the request's TTFT).
    reconnects: int = 0


def paired_interval(top: list[float], bottom: list[float]) -> tuple[float, float] | None:
    """95 % confidence interval of the ratio top/bottom of a per-round figure (tokens/s, TTFT p50) from paired
    rounds (round i of each ran the same requests): a t-interval of the mean log ratio, back on the ratio scale.
    None below MIN_ROUNDS_FOR_CI pairs."""
    pairs = [(x, y) for x, y in zip(top, bottom, strict=False) if x > 0 and y > 0]  # NaN compares False
    if len(pairs) < MIN_ROUNDS_FOR_CI:
        return None
    import numpy as np
    from scipy import stats

    logs = np.log([x / y for x, y in pairs])
    if np.ptp(logs) == 0:
        return math.exp(logs[0]), math.exp(logs[0])
    ci = stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    return math.exp(ci.low), math.exp(ci.high)


def _centre(interval: tuple[float, float]) -> float:
    """The geometric mean of the paired ratios: their log-scale t-interval is symmetric about its log."""
    return math.sqrt(interval[0] * interval[1])


def _put_interval(row: dict[str, float], key: str, interval: tuple[float, float]) -> None:
    row[f"{key} ci_low"], row[f"{key} ci_high"] = interval


def ratios(levels: list[Level]) -> dict[str, dict[str, float]]:
    """Per concurrency: throughput ratios between targets and TTFT p50 ratios (`ttft b/a`), each with its
    paired-round 95 % confidence interval (`<ratio> ci_low` / `ci_high`) where there are enough rounds, and the
    TTFT p50 Envoy adds (c - b, ms)."""
    by = {(LETTERS[lv.target], lv.concurrency): lv for lv in levels}
    out: dict[str, dict[str, float]] = {}
    for c in sorted({lv.concurrency for lv in levels}):
        row: dict[str, float] = {}
        for top, bottom in RATIOS:
            x, y = by.get((top, c)), by.get((bottom, c))
            if x is not None and y is not None and y.output_tokens_per_s > 0:
                row[f"{top}/{bottom}"] = x.output_tokens_per_s / y.output_tokens_per_s
                interval = paired_interval(x.rounds, y.rounds)
                if interval is not None:
                    _put_interval(row, f"{top}/{bottom}", interval)
        for top, bottom in TTFT_RATIOS:
            x, y = by.get((top, c)), by.get((bottom, c))
            if x is not None and y is not None and y.ttft_p50_ms > 0:
                key = f"ttft {top}/{bottom}"
                interval = paired_interval(x.round_ttft_p50_ms, y.round_ttft_p50_ms)
                # The ratio of two p50s can fall outside the interval of the paired rounds' ratios (at concurrency
                # 1 the p50s are of different requests): with an interval, the figure is its centre.
                row[key] = _centre(interval) if interval is not None else x.ttft_p50_ms / y.ttft_p50_ms
                if interval is not None:
                    _put_interval(row, key, interval)
        b = by.get(("b", c))
        for rest in ("c", "h"):
            r = by.get((rest, c))
            if b is not None and r is not None:
                row[f"ttft_p50_{rest}-b_ms"] = r.ttft_p50_ms - b.ttft_p50_ms
        out[str(c)] = row
    return out


def pooled(levels: list[Level]) -> dict[str, float]:
    """Every level's paired rounds together, per ratio: the geometric mean of the paired ratios with its 95 %
    interval (`b/a`, `b/a ci_low`, `b/a ci_high`; `ttft b/a` ...). More pairs than any one level has, so the
    narrowest statement a run can make about two targets."""
    by = {(LETTERS[lv.target], lv.concurrency): lv for lv in levels}
    levels_run = sorted({lv.concurrency for lv in levels})
    out: dict[str, float] = {}
    for key, (top, bottom), figure in [
        *((f"{t}/{b}", (t, b), "rounds") for t, b in RATIOS),
        *((f"ttft {t}/{b}", (t, b), "round_ttft_p50_ms") for t, b in TTFT_RATIOS),
    ]:
        tops: list[float] = []
        bottoms: list[float] = []
        for c in levels_run:
            x, y = by.get((top, c)), by.get((bottom, c))
            if x is not None and y is not None:
                xs, ys = getattr(x, figure), getattr(y, figure)
                n = min(len(xs), len(ys))
                tops += xs[:n]
                bottoms += ys[:n]
        interval = paired_interval(tops, bottoms)
        if interval is not None:
            out[key] = _centre(interval)
            _put_interval(out, key, interval)
    return out


def print_report(
    levels: list[Level], table: dict[str, dict[str, float]], together: dict[str, float], http_client: str
) -> None:
    head = (
        f"{'target':<30}{'conc':>5}{'ok':>6}{'req/s':>8}{'tok/s':>9}{'TTFT p50':>10}{'p99':>8}{'ITL p50':>9}{'p99':>8}"
    )
    print("\n" + head + "  errors")
    for lv in sorted(levels, key=lambda lv: (LETTERS[lv.target], lv.concurrency)):
        name = f"({LETTERS[lv.target]}) {LABELS[lv.target]}"
        print(
            f"{name:<30}{lv.concurrency:>5}{lv.ok:>6}{lv.requests_per_s:>8.2f}{lv.output_tokens_per_s:>9.1f}"
            f"{lv.ttft_p50_ms:>10.1f}{lv.ttft_p99_ms:>8.1f}{lv.itl_p50_ms:>9.1f}{lv.itl_p99_ms:>8.1f}"
            f"  {lv.errors or ''}" + (f" reconnected {lv.reconnects}" if lv.reconnects else "")
        )
    columns = sorted({k for row in table.values() for k in row if not k.endswith(("ci_low", "ci_high"))})
    print(f"\n{'conc':>5}" + "".join(f"{k:>22}" for k in columns))
    for c, row in [*table.items(), *([("all", together)] if together else [])]:
        cells = []
        for k in columns:
            cell = f"{row[k]:.3f}" if k in row else "-"
            if f"{k} ci_low" in row:
                cell += f" [{row[f'{k} ci_low']:.2f},{row[f'{k} ci_high']:.2f}]"
            cells.append(f"{cell:>22}")
        print(f"{c:>5}" + "".join(cells))
    print("[low,high]: 95 % confidence interval from paired rounds; all: every level's paired rounds pooled")
    bare_h = "" if http_client == "bare" else "; (h) on the bare one"
    print(f"OpenAI REST targets (a, c, d) on the {http_client} HTTP client{bare_h}")
    failed = failures(levels)
    print(f"FAILED REQUESTS: {failed}" if failed else "every target finished every request (0 errors)")


def failures(levels: list[Level]) -> dict[str, int]:
    """Failed requests per target and concurrency ("vllm c=8": 3): a ratio over them compares unequal work."""
    return {f"{lv.target} c={lv.concurrency}": lv.requests - lv.ok for lv in levels if lv.ok < lv.requests}


def plot(levels: list[Level], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target in sorted({lv.target for lv in levels}, key=lambda t: LETTERS[t]):
        rows = sorted((lv for lv in levels if lv.target == target), key=lambda lv: lv.concurrency)
        label = f"({LETTERS[target]}) {LABELS[target]}"
        tps = [lv.output_tokens_per_s for lv in rows]
        left.plot(tps, [lv.ttft_p50_ms for lv in rows], marker="o", label=label)
        right.plot(tps, [lv.itl_p50_ms for lv in rows], marker="o", label=label)
        for lv in rows:
            left.annotate(str(lv.concurrency), (lv.output_tokens_per_s, lv.ttft_p50_ms), fontsize=7)
    left.set(xlabel="output tokens/s", ylabel="TTFT p50 (ms)", title="latency vs throughput (labels: concurrency)")
    right.set(xlabel="output tokens/s", ylabel="inter-token latency p50 (ms)", title="ITL vs throughput")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- main -------------------------------------------------------------------------------------------------------
