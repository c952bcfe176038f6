"""transport.sse: stream chunks as Server-Sent Events, the proto3 JSON mapping of each chunk, fast path included."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from chatgen.transport import sse
from chatgen.v1 import chatgen_pb2 as pb

ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_795_000_000, "model": "org/m"}
TEXTS = [
    "Hello",
    "",
    ' say "hi"',
    "back\\slash",
    "line\nbreak\ttab",
    "\x00\x1f ctl",
    "é ü 中文",
    "🙂 emoji",
    "</script>",
]


def parse(data: bytes) -> list[str]:
    """The payloads of SSE `data:` events, checking the framing."""
    text = data.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: ") :] for e in events]


def content_chunk(text: str, index: int = 0, field: str = "content") -> pb.StreamChatCompletionResponse:
    # Reasoning goes out under both of its names, as the server sends it.
    names = ("reasoning_content", "reasoning") if field == "reasoning_content" else (field,)
    delta = pb.ChatCompletionDelta(**{name: text for name in names})
    return pb.StreamChatCompletionResponse(**ENVELOPE, choices=[pb.ChatCompletionChunkChoice(index=index, delta=delta)])


def round_trip(payload: str, message_type: type) -> object:
    message = message_type()
    json_format.Parse(payload, message)  # rejects a field the .proto does not have
    return message


def chat_events() -> sse.Events:
    return sse.Events(pb.StreamChatCompletionResponse(**{k: v for k, v in ENVELOPE.items() if k != "id"}))


@pytest.mark.parametrize("field", ["content", "reasoning_content"])
@pytest.mark.parametrize("index", [0, 2])
def test_the_fast_path_is_byte_for_byte_json_formats_rendering(field: str, index: int) -> None:
    events = chat_events()
    for text in TEXTS:
        chunk = content_chunk(text, index, field)
        body = events.text(ENVELOPE["id"], index, field, text)  # type: ignore[arg-type]
        assert body.data == sse.event(chunk)
        [payload] = parse(body.data)
        assert round_trip(payload, pb.StreamChatCompletionResponse) == chunk
        expected = {"reasoning_content": text, "reasoning": text} if field == "reasoning_content" else {field: text}
        assert json.loads(payload)["choices"][0]["delta"] == expected


def test_completion_text_fast_path() -> None:
    events = sse.Events(pb.StreamCompletionResponse(object="text_completion", created=5, model="m"))
    for text in TEXTS:
        chunk = pb.StreamCompletionResponse(
            id="cmpl-1", object="text_completion", created=5, model="m", choices=[{"index": 0, "text": text}]
        )
        body = events.text("cmpl-1", 0, "text", text)
        assert body.data == sse.event(chunk) == events.chunk(chunk).data
        assert json.loads(parse(body.data)[0]) == {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 5,
            "model": "m",
            "choices": [{"index": 0, "text": text}],
        }


def test_fields_print_in_proto_order_with_zero_values_and_without_an_empty_tool_calls() -> None:
    first = pb.StreamChatCompletionResponse(
        **ENVELOPE,
        choices=[pb.ChatCompletionChunkChoice(index=0, delta=pb.ChatCompletionDelta(role="assistant", content=""))],
    )
    payload = parse(chat_events().chunk(first).data)[0]
    assert payload == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795000000,"model":"org/m",'
        '"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
    )
    last = pb.StreamChatCompletionResponse(
        **ENVELOPE, usage=pb.Usage(prompt_tokens=3, completion_tokens=0, total_tokens=3)
    )
    assert json.loads(parse(sse.event(last))[0]) == {
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
    payload = parse(chat_events().chunk(chunk).data)[0]
    assert round_trip(payload, pb.StreamChatCompletionResponse) == chunk
    got = json.loads(payload)["choices"][0]
    assert got["delta"]["tool_calls"] == [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]
    assert got["finish_reason"] == "tool_calls"
    assert got["logprobs"]["content"] == [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]


def test_an_error_chunk_is_an_event_with_the_whole_openai_error_object() -> None:
    chunk = pb.StreamChatCompletionResponse(**ENVELOPE, error=pb.ErrorDetail(message="engine died", type="t", code="c"))
    got = json.loads(parse(chat_events().chunk(chunk).data)[0])
    # OpenAI's error object always has all four keys: an absent param is null, as in chatgen's other errors.
    assert list(got["error"].items()) == [("message", "engine died"), ("type", "t"), ("param", None), ("code", "c")]
    assert got["choices"] == []
    with_param = pb.ErrorDetail(message="m", type="t", param="max_tokens", code="c")
    got = json.loads(parse(chat_events().chunk(pb.StreamChatCompletionResponse(**ENVELOPE, error=with_param)).data)[0])
    assert got["error"]["param"] == "max_tokens"


def test_only_the_first_body_carries_the_content_type_and_done_is_the_terminator() -> None:
    events = chat_events()
    bodies = [events.chunk(content_chunk("a")), events.text("chatcmpl-1", 0, "content", "b"), events.body(sse.DONE)]
    assert [b.content_type for b in bodies] == ["text/event-stream", "", ""]
    assert parse(bodies[-1].data) == ["[DONE]"]


def test_frames_are_per_choice_and_field() -> None:
    events = chat_events()
    a = json.loads(parse(events.text("chatcmpl-1", 0, "content", "a").data)[0])
    b = json.loads(parse(events.text("chatcmpl-1", 1, "content", "b").data)[0])
    c = json.loads(parse(events.text("chatcmpl-1", 1, "reasoning_content", "c").data)[0])
    assert [x["choices"] for x in (a, b, c)] == [
        [{"index": 0, "delta": {"content": "a"}}],
        [{"index": 1, "delta": {"content": "b"}}],
        [{"index": 1, "delta": {"reasoning_content": "c", "reasoning": "c"}}],
    ]
    assert {x["id"] for x in (a, b, c)} == {"chatcmpl-1"} and a["created"] == ENVELOPE["created"]
