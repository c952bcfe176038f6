"""benchmarks.rss: per-process RSS samples of a real process tree, and slopes fitted after the warm-up."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from benchmarks.rss import RssSampler, Series, trend


def test_a_steady_climb_after_the_warm_up_is_its_slope_per_minute() -> None:
    # 0-60 s: warm-up growth of 100 MiB; then 1 MiB every 10 s, i.e. 6 MiB/min.
    times = [0.0, 30.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0]
    rss = [100.0, 150.0, 200.0, 201.0, 202.0, 203.0, 204.0, 205.0, 206.0]
    result = trend(Series("chatgen", 1, times, rss), warmup_share=0.5)
    assert math.isclose(result.slope_mib_per_min, 6.0)
    assert (result.samples, result.first_mib, result.last_mib, result.max_mib) == (9, 100.0, 206.0, 206.0)


def test_too_few_samples_after_the_warm_up_give_no_slope() -> None:
    result = trend(Series("envoy", 2, [0.0, 10.0], [50.0, 60.0]), warmup_share=0.25)
    assert math.isnan(result.slope_mib_per_min)


def test_every_process_of_the_tree_is_sampled_under_its_own_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = RssSampler(os.getpid(), interval_s=1)
        sampler.sample()
        sampler.sample()
    finally:
        child.kill()
        child.wait()
    assert sampler.series[os.getpid()].role == "chatgen"  # the root, whatever it is, is the server
    assert len(sampler.series[child.pid].rss_mib) == 2
    assert all(mib > 1 for mib in sampler.series[child.pid].rss_mib)
