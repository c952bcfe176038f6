"""transport.rest: the REST API's JSON bodies (their types checked at the gateway: tests/unit/gateway/
test_json_types.py) are parsed into the same message a gRPC caller sends; replies render as the REST API's JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.errors import ApiError, Failure
from chatgen.transport import rest
from chatgen.v1 import chatgen_pb2 as pb

ASK = [{"role": "user", "content": "hi"}]


def parse(body: Any) -> pb.CreateChatCompletionRequest:
    return rest.parse(json.dumps(body).encode(), pb.CreateChatCompletionRequest)


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"a": NaN}', b'{"a": Infinity}', b"[1, 2]", b'"text"'])
def test_what_is_not_a_json_object_is_a_400(data: bytes) -> None:
    with pytest.raises(ApiError) as info:
        rest.parse(data, pb.CreateChatCompletionRequest)
    assert info.value.failure is Failure.INVALID_REQUEST and info.value.param is None


def test_a_valid_body_is_the_message_a_grpc_caller_sends() -> None:
    body = {
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": None}],
        "max_tokens": 3.0, "temperature": 0, "n": None, "stop": ["a"], "seed": 2**40, "logit_bias": {"7": -1},
        "tools": None, "some_unknown_field": {"ignored": True}, "stream": True,
    }  # fmt: skip
    request = parse(body)
    expected = json_format.ParseDict(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 3,
         "temperature": 0, "stop": ["a"], "seed": 2**40, "logit_bias": {"7": -1}, "stream": True},
        pb.CreateChatCompletionRequest(),
    )  # fmt: skip
    assert request == expected
    # null means "not sent": no n, no tools.
    assert not request.HasField("n") and not request.tools


def test_a_reply_renders_with_its_fields_in_proto_order_and_zero_values() -> None:
    reply = pb.CreateChatCompletionResponse(id="chatcmpl-1", object="chat.completion", created=5, model="m")
    reply.choices.add(index=0, message=pb.ChatCompletionMessage(role="assistant", content="hi"), finish_reason="stop")
    data = json.loads(rest.render(reply))
    assert list(data) == ["id", "object", "created", "model", "choices"]
    assert data["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": []}, "finish_reason": "stop"
    }  # fmt: skip
