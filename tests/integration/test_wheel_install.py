"""chatgen installs anywhere: its wheel, installed (not editable) into a fresh virtual environment outside the
checkout, serves a chat completion through Envoy from there, with nothing of the source tree on its path."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_NAME, REPO, Service, running_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("chatgen-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A new venv with the wheel installed in it; its dependencies (vLLM, torch, ...) come from the test
    environment's site-packages through a .pth path, whose own .pth files (the editable install) are not read."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Into the venv's own site-packages (pip's --python would see the editable chatgen of the environment pip
    # itself runs from, and skip the wheel as already installed).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, str(wheel)], check=True
    )
    (Path(target) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_the_wheel_carries_what_serving_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"chatgen/gateway/openai_compat.lua", "chatgen/v1/chatgen.proto", "chatgen/v1/chatgen_pb2.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "protos/")) for n in names)


def test_the_installed_package_is_the_wheels(fresh_python: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [fresh_python, "-c", "import chatgen; print(chatgen.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(Path(fresh_python).parent.parent)) and not where.startswith(str(REPO)), where


@pytest.fixture(scope="module")
def installed_service(fresh_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with running_service("hf", "--no-request-log", python=fresh_python, cwd=cwd, env=env) as service:
        yield service


def test_the_installed_package_serves_through_envoy(installed_service: Service) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, "temperature": 0}  # fmt: skip
    reply = httpx.post(f"{installed_service.http_base}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    bad = httpx.post(f"{installed_service.http_base}/v1/chat/completions", json={**body, "max_tokens": "3"}, timeout=30)
    assert bad.status_code == 400 and json.loads(bad.text)["error"]["param"] == "max_tokens"
    streamed = httpx.post(f"{installed_service.http_base}/v1/completions", timeout=120,
                          json={"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 3, "stream": True})  # fmt: skip
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
