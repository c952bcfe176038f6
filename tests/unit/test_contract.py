"""The contract's checks (scripts/buf.sh): buf lint passes, nothing breaks against the released contract, and the
breaking check does catch a break."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
from pathlib import Path

import google.api
from grpc_tools import protoc

from tests.conftest import REPO

BUF = Path(sys.executable).parent / "buf"
RELEASED = REPO / "protos" / "released" / "chatgen-v1.binpb"


def buf_sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "scripts" / "buf.sh"), command], capture_output=True, text=True)


def test_buf_lint_passes() -> None:
    result = buf_sh("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contract_does_not_break_the_released_one() -> None:
    result = buf_sh("breaking")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_renamed_field_is_caught(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos" / "chatgen", protos / "chatgen")
    proto = protos / "chatgen" / "v1" / "chatgen.proto"
    text = proto.read_text()
    assert "  optional int32 max_tokens = 5;" in text
    proto.write_text(text.replace("  optional int32 max_tokens = 5;", "  optional int32 max_new_tokens = 5;", 1))
    image = tmp_path / "image.binpb"
    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    includes = [str(protos), str(importlib.resources.files("grpc_tools") / "_proto"), str(googleapis)]
    argv = ["protoc", *(f"-I{p}" for p in includes), f"--descriptor_set_out={image}", "--include_imports"]
    assert protoc.main([*argv, "chatgen/v1/chatgen.proto"]) == 0
    result = subprocess.run(
        [str(BUF), "breaking", str(image), "--against", str(RELEASED), "--path", "chatgen/v1/chatgen.proto",
         "--config", str(REPO / "protos" / "buf.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'changed name from "max_tokens" to "max_new_tokens"' in result.stdout
