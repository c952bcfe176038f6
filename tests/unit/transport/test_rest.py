"""transport.rest: the REST API's JSON bodies are checked against the request descriptor as strictly as OpenAI
checks them, then parsed into the same message a gRPC caller sends; replies render as the REST API's JSON."""

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


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "m", "messages": {"role": "user", "content": "hi"}}, "messages", "expected an array"),
        ({"model": "m", "messages": ASK, "stream": "yes"}, "stream", "expected a boolean, but got a string"),
        ({"model": "m", "messages": ASK, "stream": 1}, "stream", "expected a boolean, but got a number"),
        ({"model": "m", "messages": ASK, "max_tokens": "3"}, "max_tokens", "expected an integer"),
        ({"model": "m", "messages": ASK, "max_tokens": 2.5}, "max_tokens", "expected an integer"),
        ({"model": "m", "messages": ASK, "max_tokens": 2**31}, "max_tokens", "maximum"),
        ({"model": "m", "messages": ASK, "temperature": "0.5"}, "temperature", "expected a number"),
        ({"model": "m", "messages": ASK, "temperature": True}, "temperature", "expected a number, but got a boolean"),
        ({"model": 5, "messages": ASK}, "model", "expected a string"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": {}}]}, "messages[0].tool_calls",
         "expected an array"),
        ({"model": "m", "messages": ASK, "logit_bias": {"5": "x"}}, "logit_bias.5", "expected a number"),
        ({"model": "m", "messages": ASK, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
         "expected a boolean"),
        ({"model": "m", "messages": ASK, "chat_template_kwargs": []}, "chat_template_kwargs", "expected an object"),
    ],
)  # fmt: skip
def test_wrong_json_types_are_400s_naming_the_field(body: dict[str, Any], param: str, says: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.failure is Failure.INVALID_REQUEST
    assert info.value.param == param
    assert says in info.value.message


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


def test_the_schema_comes_from_the_descriptor() -> None:
    schema = rest.message_schema(pb.CreateChatCompletionRequest.DESCRIPTOR)
    assert set(schema["properties"]) == {f.name for f in pb.CreateChatCompletionRequest.DESCRIPTOR.fields}
    assert schema["properties"]["n"] == {"type": ["integer", "null"], "minimum": -(2**31), "maximum": 2**31 - 1}
    assert schema["properties"]["stop"] == {}  # google.protobuf.Value: any JSON
    message = schema["properties"]["messages"]["items"]
    assert message["properties"]["tool_calls"]["type"] == ["array", "null"]


def test_a_reply_renders_with_its_fields_in_proto_order_and_zero_values() -> None:
    reply = pb.CreateChatCompletionResponse(id="chatcmpl-1", object="chat.completion", created=5, model="m")
    reply.choices.add(index=0, message=pb.ChatCompletionMessage(role="assistant", content="hi"), finish_reason="stop")
    data = json.loads(rest.render(reply))
    assert list(data) == ["id", "object", "created", "model", "choices"]
    assert data["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": []}, "finish_reason": "stop"
    }  # fmt: skip
