"""The transcoder's descriptor set comes from the generated modules (no .proto or protoc at run time)."""

from __future__ import annotations

from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from chatgen.gateway.descriptors import descriptor_set, write_descriptor_set
from chatgen.protogen import build_descriptor_set


def test_it_equals_what_protoc_builds_from_the_proto(tmp_path: Path) -> None:
    ours = descriptor_pb2.FileDescriptorSet.FromString(write_descriptor_set(tmp_path / "ours.pb").read_bytes())
    theirs = descriptor_pb2.FileDescriptorSet.FromString(build_descriptor_set(tmp_path / "protoc.pb").read_bytes())
    assert [f.name for f in ours.file] == [f.name for f in theirs.file]
    assert ours.file[-1].name == "chatgen/v1/chatgen.proto"
    for file in (*ours.file, *theirs.file):
        # protoc writes each field's default JSON name (so do the runtime's well-known types); Envoy derives it
        # where it is absent.
        fields = [*file.extension, *(f for m in _messages(file) for f in (*m.field, *m.extension))]
        for field in fields:
            field.ClearField("json_name")
    # The well-known types are the protobuf runtime's own (its descriptor.proto is newer than grpcio-tools' copy).
    ours_files = [f for f in ours.file if not f.name.startswith("google/protobuf/")]
    assert ours_files == [f for f in theirs.file if not f.name.startswith("google/protobuf/")]
    assert [f.name for f in ours_files] == [
        "google/api/http.proto", "google/api/annotations.proto", "google/api/httpbody.proto", "chatgen/v1/chatgen.proto"
    ]  # fmt: skip


def _messages(file: descriptor_pb2.FileDescriptorProto) -> list[descriptor_pb2.DescriptorProto]:
    out, stack = [], list(file.message_type)
    while stack:
        message = stack.pop()
        out.append(message)
        stack.extend(message.nested_type)
    return out


def test_the_descriptor_set_carries_the_http_rules() -> None:
    fds = descriptor_set()
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
        # The bodies the gateway still passes as they came (google.api.HttpBody), for the server to parse.
        "ModelsService.LoadLoraAdapterHttp": ("post", "/v1/load_lora_adapter"),
        "ModelsService.UnloadLoraAdapterHttp": ("post", "/v1/unload_lora_adapter"),
        "TokenizerService.TokenizeHttp": ("post", "/tokenize"),
        "TokenizerService.DetokenizeHttp": ("post", "/detokenize"),
        # Transcoded: the typed RPCs' requests parsed and replies rendered by Envoy (a stream's binding is the one
        # the gateway's Lua filter sends a `"stream": true` body to; /invocations goes to one of these by shape).
        "ChatService.CreateChatCompletion": ("post", "/v1/chat/completions"),
        "ChatService.StreamChatCompletion": ("post", "/v1/chat/completions:stream"),
        "GenerateService.CreateCompletion": ("post", "/v1/completions"),
        "GenerateService.StreamCompletion": ("post", "/v1/completions:stream"),
        "MessagesService.CreateMessage": ("post", "/v1/messages"),
        "MessagesService.StreamMessage": ("post", "/v1/messages:stream"),
        "MessagesService.CountMessageTokens": ("post", "/v1/messages/count_tokens"),
        "ResponsesService.CreateResponse": ("post", "/v1/responses"),
        "ResponsesService.StreamResponse": ("post", "/v1/responses:stream"),
        "ModelsService.ListModels": ("get", "/v1/models"),
        "ModelsService.GetModel": ("get", "/v1/models/{id=**}"),
        "ResponsesService.GetResponse": ("get", "/v1/responses/{response_id}"),
        "ResponsesService.DeleteResponse": ("delete", "/v1/responses/{response_id}"),
        "ResponsesService.ListInputItems": ("get", "/v1/responses/{response_id}/input_items"),
        "ServingService.GetVersion": ("get", "/version"),
        "ServingService.CheckHealthHttp": ("get", "/health"),
        "ServingService.PingHttp": ("get", "/ping"),
    }
