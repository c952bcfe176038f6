"""k8s/gateway, the shared gateway's manifests: they render and validate, the routing config they mount is one
`chatgen gateway --backends` accepts and points at the chatgen Deployment's headless gRPC Service, the container
and its preStop drain parse as chatgen commands, and the drain fits the grace period."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from chatgen.cli import build_parser, environment_names, gateway_settings
from chatgen.embedded_model import EMBEDDED_MODEL_NAME
from chatgen.gateway import render_config
from chatgen.gateway.backends import parse_backends
from tests.support.envoy import assert_envoy_accepts
from tests.support.k8s import REPO, Rendered, kustomize_build, render
from tests.unit.test_k8s import K8S_VERSION


def rendered_gateway() -> Rendered:
    return Rendered([d for d in yaml.safe_load_all(kustomize_build(REPO / "k8s" / "gateway")) if d])


def config_map(rendered: Rendered, prefix: str) -> dict[str, str]:
    maps = [m for m in rendered.all("ConfigMap") if m["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    return dict(maps[0]["data"])


def test_the_gateway_renders_to_valid_kubernetes_objects() -> None:
    rendered = rendered_gateway()
    assert sorted(d["kind"] for d in rendered.docs) == [
        "ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
    ]  # fmt: skip
    for doc in rendered.docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    labels = rendered.pod["metadata"]["labels"]
    for selector in (
        rendered.one("Deployment")["spec"]["selector"]["matchLabels"],
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        rendered.one("Service")["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()


def test_it_routes_to_the_chatgen_deployments_grpc_service(tmp_path: Path) -> None:
    rendered, chatgen = rendered_gateway(), render("cpu")
    models = parse_backends(yaml.safe_load(config_map(rendered, "chatgen-backends")["backends.yaml"]))
    headless = chatgen.one("Service", "chatgen-grpc")
    assert headless["spec"]["clusterIP"] == "None"  # its name resolves to every ready pod
    grpc_port = int(chatgen.settings["CHATGEN_GRPC_PORT"])
    assert [(m.name, [(b.host, b.port) for b in m.backends]) for m in models] == [
        ("smollm2-135m-instruct", [("chatgen-grpc", grpc_port)])
    ]
    # The model name is the one the cpu overlay's server answers to (the embedded model's served name).
    assert "CHATGEN_SERVED_MODEL_NAME" not in chatgen.settings and models[0].name == EMBEDDED_MODEL_NAME

    # The container's command, with its settings and the mounted routing config, renders a config Envoy accepts.
    container = rendered.container("gateway")
    env = config_map(rendered, "chatgen-gateway-settings")
    assert set(env) <= environment_names("gateway")
    command = [*container["command"], *container["args"]]
    assert command[:2] == ["chatgen", "gateway"]
    args = build_parser(env, "gateway").parse_args(command[1:])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(args.backends).parent == Path(mounts["backends"])
    assert any(args.work_dir.startswith(m) for m in mounts.values())
    settings = replace(
        gateway_settings(args, None, args.grpc_host, args.grpc_port, tmp_path), models=models, rendered_at=1
    )
    assert_envoy_accepts(render_config(settings))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http_port, "envoy-metrics": args.envoy_stats_port}
    annotations = rendered.pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("9401", "/stats/prometheus")


def test_its_prestop_drains_within_the_grace_period() -> None:
    rendered = rendered_gateway()
    container: dict[str, Any] = rendered.container("gateway")
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["chatgen", "gateway-drain"]
    env = config_map(rendered, "chatgen-gateway-settings")
    drain = build_parser(env, "gateway-drain").parse_args(pre_stop[1:])
    gateway = build_parser(env, "gateway").parse_args([*container["command"], *container["args"]][1:])
    assert drain.envoy_admin_port == gateway.envoy_admin_port  # it reaches this container's Envoy
    assert drain.timeout + 5 <= rendered.pod["spec"]["terminationGracePeriodSeconds"]
    # The readiness probe is what the drain fails first: it must notice within the settle time.
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/healthz"
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= drain.settle
