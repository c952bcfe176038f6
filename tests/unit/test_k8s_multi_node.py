"""k8s/overlays/multi-node: each replica a LeaderWorkerSet group of GPU nodes running one vLLM engine over Ray.
The built-in kinds validate against the Kubernetes schemas, and so do the LeaderWorkerSet's two pod templates (as
PodTemplates); the LeaderWorkerSet itself is checked structurally against its Go API (leaderworkerset.x-k8s.io/v1:
its CRD, 1.3 MB of inlined pod schema, is not vendored). The leader's vLLM flags are parsed by vLLM's own parser."""

from __future__ import annotations

import copy
import re
import shlex
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

from chatgen.cli import build_parser
from chatgen.engine.vllm_args import EngineDefaults, engine_args
from tests.support.k8s import REPO, Rendered, render
from tests.unit.test_k8s import K8S_VERSION

# The fields of LeaderWorkerSetSpec and LeaderWorkerTemplate (api/leaderworkerset/v1/leaderworkerset_types.go).
SPEC = {"replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy", "networkConfig"}
TEMPLATE = {
    "leaderTemplate", "workerTemplate", "size", "restartPolicy", "subGroupPolicy", "volumeClaimTemplates",
    "persistentVolumeClaimRetentionPolicy",
}  # fmt: skip
RESTART_POLICIES = {"RecreateGroupOnPodRestart", "RecreateGroupAfterStart", "None", "Default"}
STARTUP_POLICIES = {"LeaderReady", "LeaderCreated"}
ROLLING = {"partition", "maxUnavailable", "maxSurge"}
RAY_PORT = 6379


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render("multi-node")


def lws(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("LeaderWorkerSet", "chatgen")


def pod(rendered: Rendered, role: str) -> dict[str, Any]:
    return lws(rendered)["spec"]["leaderWorkerTemplate"][f"{role}Template"]  # type: ignore[no-any-return]


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in template["spec"]["containers"] if c["name"] == name]
    return found


def gpus(template: dict[str, Any]) -> int:
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in template["spec"]["containers"])


def test_the_groups_replace_the_deployment(rendered: Rendered) -> None:
    kinds = sorted(d["kind"] for d in rendered.docs)
    assert "Deployment" not in kinds and kinds.count("LeaderWorkerSet") == 1, kinds
    for doc in rendered.docs:
        if doc["kind"] != "LeaderWorkerSet":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    hpa = rendered.one("HorizontalPodAutoscaler")
    target = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": "chatgen"}
    assert hpa["spec"]["scaleTargetRef"] == target


def test_the_leaderworkerset_has_the_shape_of_its_api(rendered: Rendered) -> None:
    doc = lws(rendered)
    assert doc["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata"} | {"spec"} and set(doc["spec"]) <= SPEC
    template = doc["spec"]["leaderWorkerTemplate"]
    assert set(template) <= TEMPLATE and "workerTemplate" in template
    assert template["size"] >= 2 and template["restartPolicy"] in RESTART_POLICIES
    assert doc["spec"]["startupPolicy"] in STARTUP_POLICIES
    rollout = doc["spec"]["rolloutStrategy"]
    assert rollout["type"] == "RollingUpdate" and set(rollout["rollingUpdateConfiguration"]) <= ROLLING
    # Each pod template is a Kubernetes PodTemplateSpec: validated as the built-in PodTemplate that holds one.
    for role in ("leader", "worker"):
        template = pod(rendered, role)
        holder = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}, "template": template}
        kubernetes_validate.validate(holder, K8S_VERSION, strict=True)


def test_the_leader_is_the_single_node_pod_plus_the_ray_head(rendered: Rendered) -> None:
    """Probes, drain, sidecar, settings, volumes and placement are the gpu overlay's; only the server's command,
    its Ray port and its share of the GPUs differ."""
    single = copy.deepcopy(render("gpu").pod)
    leader = copy.deepcopy(pod(rendered, "leader"))
    server = container(leader, "server")
    expected = container(single, "server")
    for key in ("command", "args", "resources"):
        expected.pop(key), server.pop(key)
    assert server.pop("ports") == [*expected.pop("ports"), {"name": "ray", "containerPort": RAY_PORT}]
    # The ConfigMap's name carries its own content's hash (this overlay's settings differ from gpu's), and the
    # image is the one with Ray (test_the_groups_run_the_image_with_ray).
    for template in (single, leader):
        for c in [*template["spec"]["containers"], *template["spec"]["initContainers"]]:
            c["envFrom"][0]["configMapRef"]["name"] = re.sub(r"-\w+$", "", c["envFrom"][0]["configMapRef"]["name"])
            c["image"] = c["image"].rsplit(":", 1)[0]
    assert leader == single


def test_the_leader_starts_ray_then_serves_with_vllm_over_ray(rendered: Rendered) -> None:
    leader = pod(rendered, "leader")
    server = container(leader, "server")
    shell, flag, script, _ = server["command"]
    assert (shell, flag) == ("sh", "-c")
    ray, serve = script.split(" && ")
    assert shlex.split(ray)[:3] == ["ray", "start", "--head"] and f"--port={RAY_PORT}" in shlex.split(ray)
    # exec: chatgen is the container's process and gets SIGTERM (the drain); "$@" are the container's args.
    assert shlex.split(serve) == ["exec", "chatgen", "serve", "$@"]
    settings = rendered.settings
    args, engine_argv = build_parser(settings, "serve").parse_known_args(["serve", *server["args"]])
    assert args.model == settings["CHATGEN_MODEL"] and args.grpc_port == int(settings["CHATGEN_GRPC_PORT"])
    defaults = EngineDefaults(args.model, args.served_model_name, None, "auto", None, on_cpu=False)
    engine = engine_args(defaults, engine_argv)
    assert engine.distributed_executor_backend == "ray"
    # One engine over every GPU of the group: tensor parallel within a node, pipeline parallel across nodes.
    template = lws(rendered)["spec"]["leaderWorkerTemplate"]
    assert engine.pipeline_parallel_size == template["size"]
    assert engine.tensor_parallel_size == gpus(leader) == gpus(pod(rendered, "worker"))


def test_workers_join_the_leaders_ray_cluster_and_serve_nothing(rendered: Rendered) -> None:
    leader, worker = pod(rendered, "leader"), pod(rendered, "worker")
    (node,) = worker["spec"]["containers"]
    assert node["command"][:2] == ["sh", "-c"] and node["args"] == []
    # LWS sets LWS_LEADER_ADDRESS in every pod of a group.
    assert shlex.split(node["command"][2]) == [
        "exec", "ray", "start", f"--address=$LWS_LEADER_ADDRESS:{RAY_PORT}", "--block", "--disable-usage-stats",
    ]  # fmt: skip
    assert "initContainers" not in worker["spec"] and "annotations" not in worker["metadata"]
    assert not {"ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle"} & node.keys()
    # The same image and model, where the leader has them, on the same GPU nodes.
    server = container(leader, "server")
    assert node["image"] == server["image"]
    model = {(m["name"], m["mountPath"]) for m in server["volumeMounts"] if m["name"] == "models"}
    assert model and model <= {(m["name"], m["mountPath"]) for m in node["volumeMounts"]}
    for key in ("nodeSelector", "tolerations", "volumes", "securityContext"):
        assert worker["spec"][key] == leader["spec"][key], key
    claim = rendered.one("PersistentVolumeClaim", "chatgen-models")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]  # every node of a group mounts it


def test_services_budget_and_shared_gateway_reach_the_leaders_only(rendered: Rendered) -> None:
    leader, worker = (pod(rendered, role)["metadata"]["labels"] for role in ("leader", "worker"))
    selectors = [
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(s["spec"]["selector"] for s in rendered.all("Service")),
    ]
    for selector in selectors:
        assert selector.items() <= leader.items() and not selector.items() <= worker.items(), selector
    # The shared gateway's backends name the headless gRPC Service, which holds the leaders.
    headless = rendered.one("Service", "chatgen-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    env = rendered.settings
    ports = {p["port"] for p in headless["spec"]["ports"]}
    assert ports == {int(env["CHATGEN_GRPC_PORT"])}
    backends = yaml.safe_load((REPO / "k8s" / "gateway" / "backends.yaml").read_text())
    assert f"chatgen-grpc:{env['CHATGEN_GRPC_PORT']}" in backends["models"][0]["backends"]


def test_the_groups_run_the_image_with_ray(rendered: Rendered) -> None:
    """vLLM's wheel does not depend on Ray: the groups run the CUDA image built with chatgen's `ray` extra."""
    images = {c["image"] for role in ("leader", "worker") for c in [
        *pod(rendered, role)["spec"]["containers"], *pod(rendered, role)["spec"].get("initContainers", [])
    ]}  # fmt: skip
    assert images == {"ghcr.io/chatgen/chatgen:cuda-ray"}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("ray[cgraph]") for requirement in extras["ray"])
    containerfile = (REPO / "Containerfile").read_text()
    assert "--build-arg ENGINE_BUILD=cuda --build-arg EXTRAS=ray" in containerfile
