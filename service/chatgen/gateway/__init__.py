"""The REST gateway: Envoy in front of the gRPC server, as a supervised child of `chatgen serve` or on its own
(`chatgen gateway`, e.g. a Kubernetes sidecar, or the shared gateway for many models with `--backends`).

settings.py what a gateway is configured with; config.py and routes.py the Envoy config as data; descriptors.py
the transcoder's descriptor set; openai_compat.lua the Lua filter (package data, read as is); process.py the Envoy
process; admin.py draining; backends.py the shared gateway's routing file.
"""

from chatgen.gateway.admin import drain_gateway
from chatgen.gateway.config import render_config
from chatgen.gateway.process import EnvoyProcess, envoy_binary, envoy_command
from chatgen.gateway.routes import RETRY_ON
from chatgen.gateway.settings import (
    GatewaySettings,
    auto_envoy_workers,
    default_work_dir,
    envoy_workers,
    usable_cpus,
)

__all__ = [
    "RETRY_ON",
    "EnvoyProcess",
    "GatewaySettings",
    "auto_envoy_workers",
    "default_work_dir",
    "drain_gateway",
    "envoy_binary",
    "envoy_command",
    "envoy_workers",
    "render_config",
    "usable_cpus",
]
