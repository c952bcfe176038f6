"""One frontend process: `chatgen serve` as usual (chatgen.app.serve), as frontend `index` of several.

Started by vLLM's APIServerProcessManager (or, without an engine core, by the supervisor) in a spawned process,
with the arguments that manager gives each of `vllm serve --api-server-count`'s API servers."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from chatgen.app import FrontendRole, ServeSettings, event_loop_factory, serve


@dataclass(frozen=True)
class FrontendSpec:
    """What every frontend gets: the settings (gateway off, its share of the admission limits, the public gRPC
    port the supervisor reserved), each frontend's unix socket by index, and the queue it reports ready on."""

    settings: ServeSettings
    sockets: tuple[str, ...]
    ready: Any
    metrics: bool
    log_level: str = "INFO"


def run_frontend(listen_address: str, sock: Any, spec: FrontendSpec, client_config: dict[str, Any]) -> None:
    """The target of each frontend process. `client_config` is vLLM's: `client_index`, `client_count` and (with an
    engine core) the engine's client addresses and the listeners bound for this frontend."""
    del listen_address, sock  # vLLM's HTTP listener: chatgen's frontends bind their own gRPC ports
    config = dict(client_config)
    index, count = int(config.pop("client_index")), int(config.pop("client_count"))
    # Its own process group: a Ctrl-C in the terminal reaches the supervisor alone, which drains the frontends
    # once, instead of each taking the one signal as a second (which ends a drain early).
    os.setpgid(0, 0)
    logging.basicConfig(
        level=getattr(logging, spec.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s %(name)s [frontend {index}]: %(message)s",
    )
    client = None
    if config:
        from chatgen.engine.vllm_engine import EngineClient

        client = EngineClient(config, count, index)
    role = FrontendRole(index, count, spec.sockets[index], spec.ready, client, spec.metrics)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        code = runner.run(serve(spec.settings, role))
    raise SystemExit(code)
