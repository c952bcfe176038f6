"""chatgen.client.convert: keyword arguments onto the proto by name, replies into typed results, errors."""

from __future__ import annotations

import grpc
import pytest

from chatgen.client import convert
from chatgen.client.types import ChatgenError
from chatgen.v1 import chatgen_pb2 as pb


def test_keyword_arguments_are_request_fields_by_name() -> None:
    request = convert.chat_request(
        "m", [{"role": "user", "content": "hi"}], {"temperature": 0.5, "enable_thinking": False}
    )
    assert (request.model, request.temperature, request.enable_thinking) == ("m", 0.5, False)
    assert request.messages[0].content.string_value == "hi"
    assert convert.completion_request("m", "Once", {"max_tokens": 3}).prompt.string_value == "Once"
    with pytest.raises(TypeError):
        convert.chat_request("m", [], {"no_such_field": 1})


def test_results_and_chunks() -> None:
    reply = pb.CreateChatCompletionResponse(
        id="c1", model="m", usage=pb.Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    )
    reply.choices.add(message=pb.ChatCompletionMessage(content="hi", reasoning_content="think"), finish_reason="stop")
    result = convert.chat_result(reply)
    assert (result.content, result.reasoning_content, result.finish_reason, result.usage.total_tokens) == (
        "hi", "think", "stop", 5
    )  # fmt: skip
    chunk = pb.StreamChatCompletionResponse(id="c1")
    chunk.choices.add(delta=pb.ChatCompletionDelta(role="assistant", content=""))
    assert (convert.chat_chunk(chunk).role, convert.chat_chunk(chunk).finish_reason) == ("assistant", None)
    last = pb.StreamCompletionResponse(id="c2", usage=pb.Usage(total_tokens=9))
    assert convert.completion_chunk(last).usage.total_tokens == 9  # type: ignore[union-attr]


class _Failed(grpc.RpcError):
    def __init__(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "bad"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


def test_errors_carry_the_openai_fields_when_the_server_sent_them() -> None:
    body = '{"error":{"message":"bad","type":"invalid_request_error","param":"temperature","code":"invalid_request"}}'
    err = convert.error(_Failed((("x-chatgen-error", body),)))
    assert isinstance(err, ChatgenError)
    assert (err.code, err.message, err.type, err.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "bad", "invalid_request_error", "temperature"
    )  # fmt: skip
    bare = convert.error(_Failed(()))
    assert (bare.message, bare.param) == ("bad", None)
