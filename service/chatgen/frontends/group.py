"""Starting the frontend processes: over one vLLM engine core, with vLLM's own machinery (what `vllm serve
--api-server-count N` runs: the core's listeners bound once, the core launched once, each frontend an AsyncLLM
client with its index), or, on the token simulator, each with an engine of its own (no core to share)."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from chatgen.frontends.process import FrontendSpec, run_frontend

log = logging.getLogger(__name__)

# What a frontend is named in `ps` and in vLLM's logs.
PROCESS_NAME = "chatgen-frontend-{}"


@dataclass
class Group:
    """The frontends, the engine processes they share (the supervisor watches both), and how to stop them all
    once the frontends have drained."""

    frontends: Sequence[BaseProcess]
    engine: Sequence[BaseProcess] = field(default_factory=list)
    _stop: Callable[[float], None] = lambda timeout: None

    def stop(self, timeout: float = 10.0) -> None:
        self._stop(timeout)


def start_group(spec: FrontendSpec, count: int) -> Group:
    if spec.settings.engine.kind == "vllm":
        return _over_engine_core(spec, count)
    return _independent(spec, count)


def _over_engine_core(spec: FrontendSpec, count: int) -> Group:
    """As vllm.entrypoints.cli.serve.run_multi_api_server, with chatgen's frontend as the API server. Returns
    once the engine core is up and every frontend has connected to it (vLLM's start-up handshake)."""
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.utils import APIServerProcessManager

    engine = _vllm_engine(spec)
    engine.prepare_process()
    config = engine.core_config(count)
    listeners = bind_engine_zmq_listeners(config, count)
    manager: Any = None
    launch: Any = None
    try:
        log_stats = not engine.engine_args.disable_log_stats
        with launch_core_engines(config, Executor.get_class(config), log_stats, listeners.addresses) as launch:
            stats_address = launch.coordinator.get_stats_publish_address() if launch.coordinator else None
            manager = APIServerProcessManager(
                listen_address="",
                sock=None,
                # Handed to run_frontend untouched (vLLM itself only reads getattr(args, "max_num_queued_reqs")).
                args=spec,  # type: ignore[arg-type]
                num_servers=count,
                input_listeners=listeners.inputs,
                output_listeners=listeners.outputs,
                target_server_fn=run_frontend,
                stats_update_address=stats_address,
                tensor_queue=launch.tensor_queue,
            )
            launch.watched_frontend_processes = manager.processes
    except BaseException:
        _stop_core(manager, launch, engine, 5.0)
        raise
    core = launch.engine_manager.processes if launch.engine_manager is not None else []
    return Group(list(manager.processes), list(core), lambda timeout: _stop_core(manager, launch, engine, timeout))


def _vllm_engine(spec: FrontendSpec) -> Any:
    """The engine the frontends start with, for the core (its vLLM config is theirs)."""
    from chatgen.engine.factory import create_engine

    e = spec.settings.engine
    return create_engine("vllm", e.model, e.max_model_len, e.dtype, max_num_seqs=e.max_num_seqs, engine_argv=e.argv)


def _stop_core(manager: Any, launch: Any, engine: Any, timeout: float) -> None:
    if manager is not None:
        manager.shutdown(timeout=timeout)
    if launch is not None and launch.engine_manager is not None:
        launch.engine_manager.shutdown(timeout=timeout)
    engine.release_process()


def _independent(spec: FrontendSpec, count: int) -> Group:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=run_frontend,
            name=PROCESS_NAME.format(i),
            args=("", None, spec, {"client_index": i, "client_count": count}),
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()

    def stop(timeout: float) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()

    return Group(processes, [], stop)
