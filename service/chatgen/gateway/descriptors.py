"""The descriptor set Envoy's transcoder loads, from the generated modules' own descriptors: the contract as the
installed package carries it, with no .proto file or protoc needed at run time."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from chatgen.v1 import chatgen_pb2


def descriptor_set(root: FileDescriptor = chatgen_pb2.DESCRIPTOR) -> descriptor_pb2.FileDescriptorSet:
    """`root` and every file it imports, dependencies first (as protoc --include_imports writes them). The
    serialized descriptors keep their options, google.api.http rules included."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        out.file.append(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))

    add(root)
    return out


def write_descriptor_set(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(descriptor_set().SerializeToString())
    return path
