"""chatgen's flags: one builder per command (serve, gateway, gateway-drain), and the groups they share."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from chatgen.chat.admission import AdmissionLimits
from chatgen.cli.environment import environment_defaults
from chatgen.engine.factory import ENGINES
from chatgen.frontends import frontend_count
from chatgen.gateway import envoy_workers

DESCRIPTION = """\
chatgen: an LLM chat & completions service with a typed gRPC API and an OpenAI-compatible REST API.

  chatgen serve                       serve the embedded SmolLM2-135M-Instruct on the CPU
  chatgen serve --model DIR           serve a Hugging Face model directory (or hub id, where a hub is reachable)
  chatgen gateway --grpc-port 50051   only the REST gateway (Envoy), in front of a gRPC server started apart

Every flag can also come from the environment as CHATGEN_<FLAG> (CHATGEN_MAX_RUNNING=64, CHATGEN_NO_GATEWAY=1):
one set of settings (a Kubernetes ConfigMap) configures the server and its gateway alike.

REST (through Envoy):  POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}
gRPC:                  chatgen.v1.ChatService, chatgen.v1.GenerateService, chatgen.v1.ModelsService,
                       grpc.health.v1.Health, reflection
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one worth showing (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser(environ: Mapping[str, str] | None = None, command: str | None = None) -> argparse.ArgumentParser:
    """chatgen's flags; with `environ`, CHATGEN_<FLAG> variables in it set the defaults of `command`'s flags."""
    parser = argparse.ArgumentParser(
        prog="chatgen", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {"serve": _serve_command(sub), "gateway": _gateway_command(sub), "gateway-drain": _drain_command(sub)}
    if environ is not None:
        # Only the command being run: a variable meant for one must not fail the other.
        environment_defaults(commands.get(command or "", commands["serve"]), environ)
    return parser


def _serve_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """`chatgen serve`: the engine, the gRPC server and (unless --no-gateway) Envoy."""
    serve = sub.add_parser(
        "serve",
        help="run the gRPC server and the REST gateway",
        description="Run the chatgen gRPC server and, unless --no-gateway, Envoy serving the OpenAI REST API. "
        "Any other flag is a vLLM engine argument, as `vllm serve` takes it (list: --help-engine).",
        formatter_class=_HelpFormatter,
        # A vLLM flag must never be taken for an abbreviation of a chatgen flag.
        allow_abbrev=False,
    )
    serve.add_argument("--help-engine", action="store_true", help="list the vLLM engine arguments and exit")
    _model_args(serve)
    net = _network_args(serve)
    net.add_argument("--metrics-port", metavar="PORT", type=int, default=9400, help="Prometheus /metrics (0: off)")
    net.add_argument("--no-gateway", action="store_true", help="serve gRPC only, without Envoy")
    _auth_args(serve)
    _load_args(serve)
    _store_args(serve)
    serve.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take to finish (a second signal stops at once)",
    )
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level")
    serve.add_argument(
        "--no-request-log",
        action="store_true",
        help="no log line per chat/completion call (JSON: request id, status, tokens, latencies; logger "
        "chatgen.requests at INFO)",
    )
    return serve


def _gateway_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """`chatgen gateway`: Envoy alone, in front of a server started apart."""
    gateway = sub.add_parser(
        "gateway",
        help="run only the REST gateway (Envoy) in front of a gRPC server started apart",
        description="Render the Envoy config `chatgen serve` would run and exec Envoy with it, in front of a "
        "chatgen gRPC server started on its own (`chatgen serve --no-gateway`): the gateway as a separate "
        "container, e.g. a Kubernetes sidecar. Give it the server's --max-running/--max-waiting, so that its "
        "circuit breaker matches the server's admission limits.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    _network_args(gateway)
    gateway.add_argument(
        "--grpc-host", default="127.0.0.1", help="where the gRPC server listens (a sidecar: the pod's loopback)"
    )
    gateway.add_argument(
        "--backends",
        metavar="FILE",
        default=None,
        help="the shared gateway: a YAML file listing models and the chatgen gRPC servers (host:port) of each; "
        "requests are routed by their `model`, replicas balanced as each model's `balance` says (least request by "
        "default) (--grpc-host/--grpc-port unused)",
    )
    gateway.add_argument(
        "--work-dir", metavar="DIR", default=None, help="where the rendered config goes (default: a /tmp directory)"
    )
    gateway.add_argument(
        "--render-only", action="store_true", help="write the config, descriptor set and Lua filter, print the path"
    )
    _load_args(gateway)
    gateway.add_argument("--log-level", default="warning", choices=LOG_LEVELS, help="Envoy's log level")
    return gateway


def _drain_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """`chatgen gateway-drain`: a preStop hook for a gateway."""
    drain = sub.add_parser(
        "gateway-drain",
        help="drain a running gateway before it stops (a Kubernetes preStop hook)",
        description="Tell the gateway's Envoy (through its admin port, on this host) to fail its /healthz and drain "
        "its listeners, then wait until its REST calls in flight have finished (or --timeout passes): the streams "
        "it carries end normally before Envoy gets its SIGTERM.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    _envoy_admin_port(drain, "the gateway's Envoy admin")
    drain.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=40.0, help="stop waiting for calls in flight after this"
    )
    drain.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="wait at least this long, while load balancers take the failing /healthz out of rotation",
    )
    return drain


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _envoy_admin_port(group: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    # One default for the gateway that binds it and the drain that calls it (CHATGEN_ENVOY_ADMIN_PORT for both).
    group.add_argument("--envoy-admin-port", metavar="PORT", type=int, default=9901, help=help)


def _network_args(command: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    net = command.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the gRPC, REST and metrics listeners bind to: this machine only by default; 0.0.0.0 for "
        "all interfaces (the container image and the Kubernetes manifests set CHATGEN_HOST=0.0.0.0)",
    )
    net.add_argument("--grpc-port", metavar="PORT", type=int, default=50051, help="gRPC port")
    net.add_argument("--http-port", metavar="PORT", type=int, default=8000, help="REST (Envoy) port")
    _envoy_admin_port(net, "Envoy admin (binds 127.0.0.1 only)")
    net.add_argument(
        "--envoy-stats-port",
        metavar="PORT",
        type=int,
        default=0,
        help="serve Envoy's Prometheus stats (GET /stats/prometheus, nothing else of the admin) here (0: off)",
    )
    net.add_argument(
        "--envoy-concurrency",
        metavar="N",
        type=envoy_workers,
        default="auto",
        help="Envoy worker threads; auto: one per 4 CPUs this process may use (affinity, cgroup CPU limit), 1 to 4",
    )
    net.add_argument("--tls-cert", metavar="PEM", default=None, help="serve gRPC and REST over TLS: certificate chain")
    net.add_argument("--tls-key", metavar="PEM", default=None, help="the certificate's private key")
    return net


def _load_args(command: argparse.ArgumentParser) -> None:
    load = command.add_argument_group("load")
    load.add_argument(
        "--frontends",
        metavar="N",
        type=frontend_count,
        default="auto",
        help="gRPC server processes over one engine (vLLM's engine core shared, as `vllm serve --api-server-count`; "
        "Envoy spreads streams between them); auto: one per 8 CPUs this process may use, 1 to 4",
    )
    load.add_argument(
        "--max-running",
        metavar="N",
        type=int,
        default=AdmissionLimits.max_running,
        help="choices generating at once (also vLLM's max_num_seqs)",
    )
    load.add_argument(
        "--max-waiting",
        metavar="N",
        type=int,
        default=AdmissionLimits.max_waiting,
        help="choices that may wait for a slot; beyond it requests get RESOURCE_EXHAUSTED / HTTP 429",
    )
    load.add_argument(
        "--max-request-bytes",
        metavar="BYTES",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request body (REST: 413) or message (gRPC: RESOURCE_EXHAUSTED)",
    )
    load.add_argument(
        "--max-grammar-seconds",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="longest a new response_format / forced-tool schema may take to compile into a grammar (checked in "
        "a worker process before the engine gets it; longer: 400); 0: no check",
    )
    load.add_argument(
        "--write-timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="longest one chunk of a stream may wait for a caller that does not read (its flow-control window "
        "full); then the call ends and its engine request is aborted, freeing the slot; 0: no limit",
    )
    load.add_argument(
        "--max-connections", metavar="N", type=int, default=4096, help="REST client connections Envoy accepts"
    )
    load.add_argument(
        "--stream-interval",
        metavar="N",
        type=int,
        default=1,
        help="streams send at most one chunk per N tokens (vLLM's flag; the first token and the end at once): fewer, "
        "fuller chunks cost the server less CPU per token; requests may raise it with `stream_interval`",
    )
    load.add_argument(
        "--stream-interval-ms",
        metavar="MS",
        type=int,
        default=0,
        help="with --stream-interval above 1, a chunk also goes out once MS milliseconds have passed since the "
        "last, however few tokens it holds (0: no time bound); requests may raise it with `stream_interval_ms`",
    )


def _store_args(command: argparse.ArgumentParser) -> None:
    store = command.add_argument_group("Responses API store")
    store.add_argument(
        "--response-store",
        metavar="URL",
        default=None,
        help="where /v1/responses keeps responses: a SQLite file path (default: responses.sqlite3 under the cache "
        "directory) or redis://host:port/db (one store for many replicas)",
    )
    store.add_argument(
        "--response-store-max-age",
        metavar="HOURS",
        type=float,
        default=30 * 24.0,
        help="stored responses older than this are gone (default 720: 30 days, as OpenAI keeps them)",
    )
    store.add_argument(
        "--response-store-max-mb",
        metavar="MB",
        type=int,
        default=1024,
        help="SQLite: the oldest responses are dropped past this much stored JSON (Redis: its own maxmemory)",
    )


def _model_args(command: argparse.ArgumentParser) -> None:
    model = command.add_argument_group("model")
    model.add_argument(
        "--model", metavar="PATH", default=None, help="HF model directory or hub id (default: embedded SmolLM2)"
    )
    model.add_argument(
        "--served-model-name", metavar="NAME", default=None, help="name clients send as `model` (default: from --model)"
    )
    model.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto: vllm where it imports, else hf; simulator: fake token timing, no model (load tests only)",
    )
    model.add_argument(
        "--simulator-timing",
        metavar="TTFT_MS,ITL_MS,TOKENS",
        default="50,10,64",
        help="token simulator: first-token delay, gap between tokens, tokens per reply",
    )
    model.add_argument(
        "--max-model-len", metavar="N", type=int, default=2048, help="context length (prompt + output tokens)"
    )
    model.add_argument(
        "--reasoning-parser",
        metavar="NAME",
        default=None,
        help="vLLM reasoning parser for the model (e.g. qwen3, deepseek_r1): splits <think> output into "
        "reasoning_content",
    )
    model.add_argument(
        "--tool-call-parser",
        metavar="NAME",
        default=None,
        help="vLLM tool-call parser for the model (e.g. hermes): turns its tool calls into message.tool_calls",
    )
    model.add_argument("--dtype", default="auto", help="weights dtype (auto: float32 on CPUs, model's own on GPUs)")
    model.add_argument(
        "--lora-modules",
        metavar="NAME=PATH",
        nargs="+",
        action="extend",
        default=[],
        help="LoRA adapters to serve beside the model, as vLLM takes them: name=path, or JSON "
        '{"name": ..., "path": ...}; requests send the name as `model` (needs --enable-lora; vLLM\'s --max-loras, '
        "--max-lora-rank, --max-cpu-loras size the adapter slots)",
    )


def _auth_args(command: argparse.ArgumentParser) -> None:
    auth = command.add_argument_group("authentication (off unless a key is given)")
    auth.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        default=[],
        help="accept this key (repeatable); also CHATGEN_API_KEYS=k1,k2",
    )
    auth.add_argument("--api-key-file", metavar="PATH", default=None, help="file with one key per line")
