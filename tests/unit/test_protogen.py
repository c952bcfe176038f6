from __future__ import annotations

from chatgen.protogen import generated_files_are_current


def test_committed_generated_code_matches_the_proto() -> None:
    assert generated_files_are_current() == [], "run: python -m chatgen.protogen"


def test_numbers_clients_read_are_not_64_bit() -> None:
    # The transcoder prints 64-bit integers as JSON strings; response numbers must stay 32-bit.
    from google.protobuf.descriptor import FieldDescriptor

    from chatgen.v1 import chatgen_pb2 as pb

    wide = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64}
    for message in (
        pb.CreateChatCompletionResponse,
        pb.StreamChatCompletionResponse,
        pb.CreateCompletionResponse,
        pb.StreamCompletionResponse,
        pb.ListModelsResponse,
    ):
        stack = [message.DESCRIPTOR]
        while stack:
            d = stack.pop()
            for f in d.fields:
                assert f.type not in wide, f"{d.full_name}.{f.name} is 64-bit"
                if f.message_type is not None and f.message_type.full_name.startswith("chatgen."):
                    stack.append(f.message_type)
