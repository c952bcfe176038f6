"""Generate the Python package `chatgen.v1` from protos/ with grpcio-tools (a development tool: nothing runs it
at serving time).

The generated package is committed (it is what `import chatgen` needs) and is checked against this generator by
a test, so it is never edited by hand: change the .proto, then run `python -m chatgen.protogen`. The package also
carries a copy of the .proto (package data, for callers who want the contract from an installed chatgen); Envoy's
descriptor set comes from the generated modules' own descriptors (chatgen.gateway.descriptors).
"""

from __future__ import annotations

import importlib.resources
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = ["chatgen/v1/chatgen.proto"]
PYTHON_OUT = REPO_ROOT / "service"


def _include_paths() -> list[str]:
    import google.api  # googleapis-common-protos ships annotations.proto / http.proto beside its modules

    grpc_tools_protos = importlib.resources.files("grpc_tools") / "_proto"
    googleapis_root = Path(next(iter(google.api.__path__))).parent.parent
    return [str(PROTO_ROOT), str(grpc_tools_protos), str(googleapis_root)]


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    argv = ["grpc_tools.protoc", *(f"-I{p}" for p in _include_paths()), *args, *PROTO_FILES]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")


def generate_python(out_dir: Path = PYTHON_OUT) -> None:
    _protoc([f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"])
    for name in PROTO_FILES:
        (out_dir / name).write_bytes((PROTO_ROOT / name).read_bytes())


def build_descriptor_set(out_file: Path, source_info: bool = False) -> Path:
    """The descriptor set protoc builds from the .proto (with imports): what the generated modules' descriptors
    must equal (tests), and with `source_info` (comments, positions) the image scripts/buf.sh checks."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _protoc(
        [f"--descriptor_set_out={out_file}", "--include_imports", *(["--include_source_info"] if source_info else [])]
    )
    return out_file


def generated_files_are_current() -> list[str]:
    """Names of committed generated files that differ from a fresh generation (empty when all match)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_python(Path(tmp))
        fresh = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
        return [str(rel) for rel in fresh if (PYTHON_OUT / rel).read_bytes() != (Path(tmp) / rel).read_bytes()]


if __name__ == "__main__":
    if sys.argv[1:2] in (["--image"], ["--descriptor-set"]):
        print(build_descriptor_set(Path(sys.argv[2]), source_info=sys.argv[1] == "--image"))
    else:
        generate_python()
        print(f"generated Python code for {', '.join(PROTO_FILES)} under {PYTHON_OUT}", file=sys.stderr)
