from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from chatgen.protogen import build_descriptor_set, generated_files_are_current


def test_committed_generated_code_matches_the_proto() -> None:
    assert generated_files_are_current() == [], "run: python -m chatgen.protogen"


def test_descriptor_set_carries_http_rules(tmp_path: Path) -> None:
    from google.api import annotations_pb2, http_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(build_descriptor_set(tmp_path / "d.pb").read_bytes())
    files = {f.name: f for f in fds.file}
    assert "google/api/http.proto" in files
    rules: dict[str, tuple[str, str]] = {}
    for service in files["chatgen/v1/chatgen.proto"].service:
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue  # gRPC only
            rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            rules[f"{service.name}.{method.name}"] = (verb, getattr(rule, verb))
    assert rules == {
        # The typed RPCs are gRPC only; the gateway passes OpenAI's JSON bodies to these as they came.
        "Chat.CreateChatCompletionHttp": ("post", "/v1/chat/completions"),
        "Generate.CreateCompletionHttp": ("post", "/v1/completions"),
        "Models.ListModels": ("get", "/v1/models"),
        "Models.GetModel": ("get", "/v1/models/{id=**}"),
    }


def test_numbers_clients_read_are_not_64_bit() -> None:
    # The transcoder prints 64-bit integers as JSON strings; response numbers must stay 32-bit.
    from google.protobuf.descriptor import FieldDescriptor

    from chatgen.v1 import chatgen_pb2 as pb

    wide = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64}
    for message in (pb.ChatCompletion, pb.ChatCompletionChunk, pb.Completion, pb.CompletionChunk, pb.ModelList):
        stack = [message.DESCRIPTOR]
        while stack:
            d = stack.pop()
            for f in d.fields:
                assert f.type not in wide, f"{d.full_name}.{f.name} is 64-bit"
                if f.message_type is not None and f.message_type.full_name.startswith("chatgen."):
                    stack.append(f.message_type)
