"""transport.json_mapping: the REST JSON the server renders (the proto3 JSON mapping, in the .proto's order,
without the empty lists OpenAI leaves out)."""

from __future__ import annotations

import json

from google.protobuf import json_format

from chatgen.transport import json_mapping
from chatgen.v1 import chatgen_pb2 as pb

ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_795_000_000, "model": "org/m"}


def round_trip(payload: str, message_type: type) -> object:
    message = message_type()
    json_format.Parse(payload, message)  # rejects a field the .proto does not have
    return message


def test_fields_print_in_proto_order_with_zero_values_and_without_an_empty_tool_calls() -> None:
    first = pb.StreamChatCompletionResponse(
        **ENVELOPE,
        choices=[pb.ChatCompletionChunkChoice(index=0, delta=pb.ChatCompletionDelta(role="assistant", content=""))],
    )
    payload = json_mapping.json_text(first)
    assert payload == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795000000,"model":"org/m",'
        '"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
    )
    last = pb.StreamChatCompletionResponse(
        **ENVELOPE, usage=pb.Usage(prompt_tokens=3, completion_tokens=0, total_tokens=3)
    )
    assert json.loads(json_mapping.json_text(last)) == {
        **ENVELOPE,
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
    }


def test_slow_path_chunks_keep_every_field() -> None:
    call = pb.ToolCallDelta(index=0, id="call_1", type="function", function=pb.FunctionCallDelta(name="f"))
    choice = pb.ChatCompletionChunkChoice(
        index=1,
        delta=pb.ChatCompletionDelta(content="x", tool_calls=[call]),
        finish_reason="tool_calls",
        logprobs=pb.ChatLogprobs(content=[pb.TokenLogprob(token="x", logprob=-0.5, bytes=[120])]),
    )
    chunk = pb.StreamChatCompletionResponse(**ENVELOPE, choices=[choice])
    payload = json_mapping.json_text(chunk)
    assert round_trip(payload, pb.StreamChatCompletionResponse) == chunk
    got = json.loads(payload)["choices"][0]
    assert got["delta"]["tool_calls"] == [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]
    assert got["finish_reason"] == "tool_calls"
    assert got["logprobs"]["content"] == [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]


def test_an_error_chunk_is_an_event_with_the_whole_openai_error_object() -> None:
    chunk = pb.StreamChatCompletionResponse(**ENVELOPE, error=pb.ErrorDetail(message="engine died", type="t", code="c"))
    got = json.loads(json_mapping.json_text(chunk))
    # OpenAI's error object always has all four keys: an absent param is null, as in chatgen's other errors.
    assert list(got["error"].items()) == [("message", "engine died"), ("type", "t"), ("param", None), ("code", "c")]
    assert got["choices"] == []
    with_param = pb.ErrorDetail(message="m", type="t", param="max_tokens", code="c")
    got = json.loads(json_mapping.json_text(pb.StreamChatCompletionResponse(**ENVELOPE, error=with_param)))
    assert got["error"]["param"] == "max_tokens"
