"""The Kubernetes manifests (k8s/, kustomize): every overlay renders and validates against the Kubernetes API
schemas, and what the manifests say about ports, probes, settings and labels agrees with chatgen's own flags and
with each other. (Probes against a running server: tests/integration/test_k8s_probes.py.)"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest

from chatgen.cli import build_parser, environment_names, gateway_settings
from chatgen.gateway import render_config
from chatgen.server import LIVENESS
from chatgen.tls import tls_files
from tests.support.envoy import assert_envoy_accepts
from tests.support.k8s import OVERLAYS, REPO, Rendered, render

# Native sidecars (initContainers with restartPolicy: Always) are GA from 1.33.
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(request.param)


def test_every_overlay_renders_to_valid_kubernetes_objects(rendered: Rendered) -> None:
    kinds = sorted(d["kind"] for d in rendered.docs)
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"]
    assert kinds in (expected, sorted([*expected, "PersistentVolumeClaim"])), kinds
    for doc in rendered.docs:
        # strict: a misspelt or misplaced field is an error, not silently dropped.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_what_the_api_server_would() -> None:
    deployment = render("cpu").one("Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 50051
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_labels_select_the_pods(rendered: Rendered) -> None:
    labels = rendered.pod["metadata"]["labels"]
    selectors = [
        rendered.one("Deployment")["spec"]["selector"]["matchLabels"],
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(s["spec"]["selector"] for s in rendered.all("Service")),
    ]
    for selector in selectors:
        assert selector.items() <= labels.items(), selector
    # What a ServiceMonitor would select: the Service's label and its port named `metrics`.
    service = rendered.one("Service", "chatgen")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "chatgen"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chatgen"}


def test_ports_are_the_ones_the_settings_give_both_processes(rendered: Rendered) -> None:
    settings = rendered.settings
    grpc_port = int(settings["CHATGEN_GRPC_PORT"])
    http_port = int(settings["CHATGEN_HTTP_PORT"])
    metrics_port = int(settings["CHATGEN_METRICS_PORT"])
    assert rendered.port("server", "grpc") == grpc_port
    assert rendered.port("server", "metrics") == metrics_port
    assert rendered.port("gateway", "http") == http_port
    annotations = rendered.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    # Every Service port targets a named container port.
    names = {p["name"] for c in ("server", "gateway") for p in rendered.container(c).get("ports", [])}
    for service in rendered.all("Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, port
    server = rendered.container("server")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe


def test_probes_ask_the_right_questions(rendered: Rendered) -> None:
    server = rendered.container("server")
    # Startup and readiness: the overall gRPC health (""), NOT_SERVING while draining; liveness: the process.
    assert "service" not in server["startupProbe"]["grpc"] and "service" not in server["readinessProbe"]["grpc"]
    assert server["livenessProbe"]["grpc"]["service"] == LIVENESS
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a model load, not a crash loop
    gateway = rendered.container("gateway")
    assert gateway["restartPolicy"] == "Always"  # a native sidecar: up before the server, down after it
    assert gateway in rendered.pod["spec"]["initContainers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_settings_name_real_flags_and_parse(rendered: Rendered) -> None:
    serve_env = rendered.environment("server")
    gateway_env = rendered.environment("gateway")
    assert rendered.command("server")[:2] == ["chatgen", "serve"]
    assert rendered.command("gateway")[:2] == ["chatgen", "gateway"]
    # A misspelt variable would be ignored without a word: each must be one that the server or the gateway reads
    # (the ConfigMap is shared: the gateway ignores the server's model settings).
    known = environment_names("serve") | environment_names("gateway") | {"CHATGEN_CACHE_DIR", "CHATGEN_API_KEYS"}
    assert {name for name in {**serve_env, **gateway_env} if name.startswith("CHATGEN_")} <= known
    serve = build_parser(serve_env, "serve").parse_known_args(rendered.command("server")[1:])
    args, engine_argv = serve
    assert engine_argv == []
    assert args.no_gateway is True  # the sidecar is the gateway
    assert args.grpc_port == int(serve_env["CHATGEN_GRPC_PORT"])
    assert args.max_running == int(serve_env["CHATGEN_MAX_RUNNING"])
    gw = build_parser(gateway_env, "gateway").parse_args(rendered.command("gateway")[1:])
    assert (gw.max_running, gw.max_waiting) == (args.max_running, args.max_waiting)
    # The drain fits in the grace period: preStop, the server's shutdown grace, then stopping the engine.
    pre_stop = rendered.container("server")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = rendered.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + args.shutdown_grace + 5, grace


def test_the_sidecar_renders_the_envoy_config_chatgen_serve_runs(rendered: Rendered, tmp_path: Path) -> None:
    """The gateway container and `chatgen serve` (what the integration tests run) render the same Envoy config
    from the same settings, and the real Envoy accepts it."""
    serve, _ = build_parser(rendered.environment("server"), "serve").parse_known_args(rendered.command("server")[1:])
    gw = build_parser(rendered.environment("gateway"), "gateway").parse_args(rendered.command("gateway")[1:])
    # serve points its own Envoy at its gRPC port on loopback; the sidecar at the pod's loopback.
    as_serve = gateway_settings(
        serve, tls_files(serve.tls_cert, serve.tls_key), "127.0.0.1", serve.grpc_port, tmp_path / "serve"
    )
    as_sidecar = gateway_settings(
        gw, tls_files(gw.tls_cert, gw.tls_key), gw.grpc_host, gw.grpc_port, tmp_path / "sidecar"
    )
    serve_text = render_config(as_serve).read_text().replace(str(tmp_path / "serve"), "DIR")
    sidecar_config = render_config(as_sidecar)
    assert sidecar_config.read_text().replace(str(tmp_path / "sidecar"), "DIR") == serve_text
    assert_envoy_accepts(sidecar_config)
    assert gw.work_dir is not None and gw.work_dir.startswith("/var/run/chatgen")
    mounts = {m["mountPath"] for m in rendered.container("gateway")["volumeMounts"]}
    assert any(gw.work_dir.startswith(m) for m in mounts), "the rendered config must go to a writable volume"


def test_gpu_overlay_asks_for_a_gpu_and_mounts_the_model() -> None:
    rendered = render("gpu")
    server = rendered.container("server")
    spec = rendered.pod["spec"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert rendered.container("server")["image"].endswith(":cuda")
    model = rendered.environment("server")["CHATGEN_MODEL"]
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert model.startswith(mounts["models"]["mountPath"] + "/") and mounts["models"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert rendered.one("PersistentVolumeClaim")["metadata"]["name"] == claim


def test_cpu_overlay_serves_the_embedded_model_on_the_cpu_build() -> None:
    rendered = render("cpu")
    server = rendered.container("server")
    assert "nvidia.com/gpu" not in server["resources"].get("limits", {})
    assert "tolerations" not in rendered.pod["spec"]
    assert server["image"].endswith(":cpu") and rendered.container("gateway")["image"] == server["image"]
    assert "CHATGEN_MODEL" not in rendered.environment("server")  # the embedded default


def test_containerfile_builds_what_the_manifests_run() -> None:
    text = (REPO / "Containerfile").read_text()
    # Every file or folder it copies from the build context exists (and is not excluded by .dockerignore).
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] not in "#"}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source not in ignored, source
    # It installs with scripts/install.sh, through the variables that script reads; at run time it sets only
    # variables the server reads (serving on all interfaces, as a container must).
    install = (REPO / "scripts" / "install.sh").read_text()
    served = environment_names("serve") | {"CHATGEN_CACHE_DIR"}
    for variable in re.findall(r"(CHATGEN_[A-Z_]+)=", text):
        assert variable in install or variable in served, variable
    assert "CHATGEN_HOST=0.0.0.0" in text
    # No test extras in the image: only those the EXTRAS build argument names (none by default).
    assert "CHATGEN_EXTRAS=${EXTRAS} " in text and re.search(r"^ARG EXTRAS=$", text, flags=re.MULTILINE)
    assert "CHATGEN_EDITABLE=0" in text and "COPY --from=build /app" not in text  # the wheel, not the sources
    # It runs as the user the pods run as, with the entry point the manifests call.
    user = re.search(r"^USER (\d+):(\d+)$", text, flags=re.MULTILINE)
    assert user is not None
    security = render("cpu").pod["spec"]["securityContext"]
    assert (int(user[1]), int(user[2])) == (security["runAsUser"], security["runAsGroup"])
    assert 'ENTRYPOINT ["chatgen"]' in text
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, flags=re.MULTILINE)[1].split()}  # type: ignore[index]
    settings = render("cpu").settings
    assert exposed == {int(settings[k]) for k in ("CHATGEN_GRPC_PORT", "CHATGEN_HTTP_PORT", "CHATGEN_METRICS_PORT")}
