"""What `chatgen serve` runs with, as typed settings (chatgen.cli turns flags into them; chatgen.app runs them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatgen.chat.adapters import AdapterModule
from chatgen.chat.admission import AdmissionLimits
from chatgen.chat.coalescing import StreamInterval
from chatgen.engine.factory import ModelChoice, SimulatorTiming
from chatgen.gateway import GatewaySettings
from chatgen.store import StoreLimits
from chatgen.tls import TlsFiles


@dataclass(frozen=True)
class EngineSettings:
    kind: str
    model: ModelChoice
    max_model_len: int | None
    dtype: str
    simulator: SimulatorTiming
    # vLLM engine flags, as `vllm serve` takes them.
    argv: tuple[str, ...] = ()
    # vLLM's batch limit; None: the admission limit (--max-running). Frontends, each admitting a share of it,
    # keep the whole.
    max_num_seqs: int | None = None


@dataclass(frozen=True)
class ServeSettings:
    engine: EngineSettings
    host: str
    grpc_port: int
    limits: AdmissionLimits
    max_request_bytes: int
    # Envoy in front of the server (None: gRPC only); its grpc_port is the server's once it listens.
    gateway: GatewaySettings | None
    metrics_port: int = 0
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    api_keys: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    shutdown_grace: float = 30.0
    log_requests: bool = True
    # Compile limit per new decoding schema (chat.grammar); 0: none.
    max_grammar_seconds: float = 5.0
    # Longest one stream chunk may wait on a caller that does not read; 0: none.
    write_timeout: float = 30.0
    # The Responses API's store: None (SQLite under the cache directory), a SQLite path, or redis://...
    response_store: str | None = None
    response_store_limits: StoreLimits = field(default_factory=StoreLimits)
    # LoRA adapters loaded at start (--lora-modules), served under their names beside the model.
    lora_modules: tuple[AdapterModule, ...] = ()
    # How streams coalesce tokens into chunks (--stream-interval, --stream-interval-ms).
    stream_interval: StreamInterval = field(default_factory=StreamInterval)
    # gRPC server processes over one engine (--frontends; chatgen.frontends runs them when above 1).
    frontends: int = 1


@dataclass(frozen=True)
class FrontendRole:
    """This process is frontend `index` of `count` (chatgen.frontends): it shares the public gRPC port with the
    others, listens for the local Envoy on its own unix socket, reaches the engine core as `client` (a
    vllm_engine.EngineClient; None: its own engine, e.g. the token simulator), and once it serves puts
    (index, metrics port or 0) on `ready`, a multiprocessing queue. The supervisor prints the ready line, runs
    Envoy and serves the metrics of all."""

    index: int
    count: int
    socket_path: str
    ready: Any
    client: Any = None
    metrics: bool = False
