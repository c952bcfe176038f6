"""gateway/: the Envoy configs checked in for people to read are the ones chatgen renders, and run as files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from chatgen.cli import gateway_files
from chatgen.gateway.config import lua_source
from chatgen.gateway.descriptors import write_descriptor_set
from tests.support.envoy import assert_envoy_accepts

REPO = Path(__file__).resolve().parents[3]
GATEWAY = REPO / "gateway"
NAMES = ("envoy.yaml", "shared-envoy.yaml")
# The files the configs name that the checkout holds (the descriptor set is built).
NAMED = ("openai_compat.lua", "json_types.lua", "replies.lua", "dkjson.lua", "request_types.json")


def test_the_checked_in_configs_are_the_rendering() -> None:
    rendered = gateway_files.rendered(REPO)
    assert sorted(rendered) == sorted((*NAMES, "request_types.json"))
    for name, text in rendered.items():
        assert (GATEWAY / name).read_text() == text, (
            f"gateway/{name} differs from what chatgen renders: run .venv/bin/python -m chatgen.cli.gateway_files"
        )


@pytest.mark.parametrize("name", NAMES)
def test_a_checked_in_config_runs_from_the_repository_root(name: str, tmp_path: Path) -> None:
    # The files as a checkout has them, plus the descriptor set the render command builds beside them.
    (tmp_path / "gateway").mkdir()
    for file in (name, *NAMED):
        shutil.copy(GATEWAY / file, tmp_path / "gateway" / file)
    write_descriptor_set(tmp_path / gateway_files.FILES.descriptor)
    assert_envoy_accepts(Path("gateway") / name, cwd=tmp_path)


def test_the_configs_name_the_checkouts_files_and_the_deployments_settings() -> None:
    serve = yaml.safe_load((GATEWAY / "envoy.yaml").read_text())
    shared = yaml.safe_load((GATEWAY / "shared-envoy.yaml").read_text())
    [rest] = [listener for listener in serve["static_resources"]["listeners"] if listener["name"] == "rest"]
    assert rest["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8000}
    text = (GATEWAY / "envoy.yaml").read_text()
    assert "filename: gateway/openai_compat.lua" in text
    assert "proto_descriptor: gateway/chatgen.pb" in text
    # The shared gateway listens where k8s/gateway/settings.env says, and routes the model its backends.yaml names.
    [shared_rest] = [listener for listener in shared["static_resources"]["listeners"] if listener["name"] == "rest"]
    assert shared_rest["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8000}
    [model] = [c for c in shared["static_resources"]["clusters"] if c["name"] == "model_0"]
    [endpoint] = model["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "chatgen-grpc", "port_value": 50051}
    # The model's route matches the header the Lua filter sets from the body's model.
    assert "exact: smollm2-135m-instruct" in (GATEWAY / "shared-envoy.yaml").read_text()


def test_the_package_serves_the_checked_in_lua_filter_and_its_modules() -> None:
    for name in ("openai_compat.lua", "json_types.lua", "replies.lua", "dkjson.lua"):
        assert (lua_source().parent / name).read_bytes() == (GATEWAY / name).read_bytes(), name


def test_the_render_command_writes_every_file(tmp_path: Path) -> None:
    shutil.copytree(REPO / "k8s" / "gateway", tmp_path / "k8s" / "gateway")
    (tmp_path / "gateway").mkdir()
    assert gateway_files.main(["--root", str(tmp_path)]) == 0
    for name in (*NAMES, "request_types.json"):
        assert (tmp_path / "gateway" / name).read_text() == (GATEWAY / name).read_text()
    assert (tmp_path / "gateway" / "chatgen.pb").stat().st_size > 10_000
