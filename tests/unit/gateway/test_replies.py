"""gateway/replies.lua: the JSON Envoy's transcoder renders for chat and completions, changed into what OpenAI and
vLLM send (run under LuaJIT: tests/support/lua.py). The transcoder's rendering is made here as Envoy 1.40 writes it
(measured, docs/design.md): the .proto's field order, every field without presence printed (an empty repeated
field as []), unset optional and message fields left out. What the rewrite gives must be the server's own JSON of
the same message (transport.json_mapping.json_text), which the …Http RPCs still send; through the real Envoy this is
checked by tests/integration/test_rest_api.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from chatgen.transport import json_mapping
from chatgen.v1 import chatgen_pb2 as pb
from tests.support.lua import Replies

ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_795_000_000, "model": "org/m"}
TEXTS = ["Hello", "", ' say "hi"', "back\\slash", "line\nbreak\ttab", "\x01\x1f ctl", "é 中文 🙂", "</script>",
         '"tool_calls":[]', '{"token_ids":[]}', '"error":{"message":"x","type":"y"}']  # fmt: skip


@pytest.fixture(scope="module")
def lua() -> Replies:
    return Replies()


def _ordered(data: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value, kind = data[field.name], field.message_type
        if kind is not None and not kind.full_name.startswith("google.protobuf.") and not kind.GetOptions().map_entry:
            value = [_ordered(v, kind) for v in value] if isinstance(value, list) else _ordered(value, kind)
        out[field.name] = value
    return out


def transcoded(message: Message) -> str:
    """`message` as the transcoder prints it (preserve_proto_field_names, always_print_primitive_fields)."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(_ordered(data, message.DESCRIPTOR), separators=(",", ":"), ensure_ascii=False)


def chunk(index: int = 0, **delta: Any) -> pb.StreamChatCompletionResponse:
    choice = pb.ChatCompletionChunkChoice(index=index, delta=pb.ChatCompletionDelta(**delta))
    return pb.StreamChatCompletionResponse(**ENVELOPE, choices=[choice])


def event(text: str) -> str:
    return f"data: {text}\n\n"


CALL = pb.ToolCallDelta(index=0, id="call_1", type="function", function=pb.FunctionCallDelta(name="f", arguments="{"))
CHUNKS = [
    chunk(role="assistant", content=""),
    *[chunk(content=t) for t in TEXTS],
    chunk(2, reasoning_content="why", reasoning="why"),
    chunk(tool_calls=[CALL]),
    pb.StreamChatCompletionResponse(**ENVELOPE, choices=[pb.ChatCompletionChunkChoice(
        index=0, delta=pb.ChatCompletionDelta(), finish_reason="stop", token_ids=[5, 6],
        logprobs=pb.ChatLogprobs(content=[pb.TokenLogprob(token="x", logprob=-0.5, bytes=[120])]))]),
    pb.StreamChatCompletionResponse(**ENVELOPE, prompt_token_ids=[1, 2], choices=[pb.ChatCompletionChunkChoice(
        index=0, delta=pb.ChatCompletionDelta(role="assistant", content=""))]),
    pb.StreamChatCompletionResponse(**ENVELOPE, usage=pb.Usage(prompt_tokens=3, completion_tokens=0, total_tokens=3)),
    pb.StreamChatCompletionResponse(**ENVELOPE, error=pb.ErrorDetail(message='died "type":"x"', type="t", code="c")),
    pb.StreamChatCompletionResponse(**ENVELOPE, error=pb.ErrorDetail(message="m", type="t", param="n", code="c")),
    pb.StreamCompletionResponse(**{**ENVELOPE, "object": "text_completion"}, choices=[
        pb.CompletionChunkChoice(index=1, text="x"), pb.CompletionChunkChoice(index=0, text="", finish_reason="length",
                                                                                prompt_token_ids=[3])]),
]  # fmt: skip


@pytest.mark.parametrize("message", CHUNKS, ids=range(len(CHUNKS)))
def test_each_chunk_becomes_the_servers_own_rendering_of_it(lua: Replies, message: Message) -> None:
    assert lua.events(event(transcoded(message))) == event(json_mapping.json_text(message))


def test_the_empty_lists_go_and_the_rest_stays(lua: Replies) -> None:
    out = json.loads(lua.events(event(transcoded(chunk(tool_calls=[CALL]))))[len("data: ") : -2])
    assert out["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{"}
    out = json.loads(lua.events(event(transcoded(chunk(content="a"))))[len("data: ") : -2])
    assert out["choices"] == [{"index": 0, "delta": {"content": "a"}}]


def test_the_error_object_has_all_four_keys(lua: Replies) -> None:
    (message,) = [m for m in CHUNKS if m.HasField("error") and not m.error.HasField("param")]
    out = json.loads(lua.events(event(transcoded(message)))[len("data: ") : -2])
    assert list(out["error"].items()) == [("message", 'died "type":"x"'), ("type", "t"), ("param", None), ("code", "c")]


@pytest.mark.parametrize("empty", [pb.StreamChatCompletionResponse(), pb.StreamCompletionResponse()])
def test_the_empty_chunk_is_done_and_events_in_one_body_are_each_rewritten(lua: Replies, empty: Message) -> None:
    body = event(transcoded(chunk(content="a"))) + event(transcoded(CHUNKS[-3])) + event(transcoded(empty))
    expected = (
        event(json_mapping.json_text(chunk(content="a")))
        + event(json_mapping.json_text(CHUNKS[-3]))
        + "data: [DONE]\n\n"
    )
    assert lua.events(body) == expected


def test_a_unary_reply_loses_its_empty_token_lists_but_keeps_its_tool_calls(lua: Replies) -> None:
    message = pb.ChatCompletionMessage(role="assistant", content="hi")
    choice = pb.ChatCompletionChoice(index=0, message=message, finish_reason="stop")
    usage = pb.Usage(prompt_tokens=1, total_tokens=1)
    reply = pb.CreateChatCompletionResponse(
        id="chatcmpl-1", object="chat.completion", created=1, model="m", choices=[choice], usage=usage
    )
    out = lua.json(transcoded(reply))
    assert out == json_mapping.json_text(reply)
    assert json.loads(out)["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": []}, "finish_reason": "stop"
    }  # fmt: skip
    choice.token_ids.extend([4])
    reply.prompt_token_ids.extend([1])
    assert lua.json(transcoded(reply)) == json_mapping.json_text(reply)
    done = pb.CompletionChoice(index=0, text="x", finish_reason="stop")
    completion = pb.CreateCompletionResponse(
        id="cmpl-1", object="text_completion", created=1, model="m", choices=[done]
    )
    assert lua.json(transcoded(completion)) == json_mapping.json_text(completion)


NAMED = [
    pb.StreamMessageResponse(type="message_start", message=pb.CreateMessageResponse(id="msg_1", type="message")),
    pb.StreamMessageResponse(type="ping"),
    pb.StreamMessageResponse(type="error", error=pb.MessageError(type="overloaded_error", message='"type":"x"')),
    pb.ResponseStreamEvent(type="response.output_text.delta", sequence_number=4, delta="Hi"),
    pb.ResponseStreamEvent(type="response.created", sequence_number=0, response=pb.Response(id="resp_1")),
]


@pytest.mark.parametrize("message", NAMED, ids=[m.type for m in NAMED])
def test_named_events_get_their_event_line_and_nothing_else_changes(lua: Replies, message: Message) -> None:
    # As Anthropic and OpenAI write them (and the server did): `event: <type>`, then the data, no [DONE].
    text = transcoded(message)
    assert lua.named(event(text) + event(text)) == f"event: {message.type}\ndata: {text}\n\n" * 2  # type: ignore[attr-defined]
