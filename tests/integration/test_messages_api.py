"""The Anthropic Messages API (/v1/messages, MessagesService) with the real anthropic SDK, raw SSE bytes and gRPC,
on the embedded model (both engines), the scripted thinking model and the scripted tool caller."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import grpc
import httpx
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service
from tests.support.models import ANSWER, REASONING, THINKING_MODEL_NAME, TOOLS_MODEL_NAME
from tests.support.sse import named_events

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}
TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sdk(service: Service) -> anthropic.Anthropic:
    # The current SDK takes sampling fields only through extra_body.
    return anthropic.Anthropic(base_url=service.http_base, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def client(service: Service) -> anthropic.Anthropic:
    return sdk(service)


@pytest.fixture(scope="module")
def messages_stub(service: Service) -> Iterator[pb_grpc.MessagesServiceStub]:
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield pb_grpc.MessagesServiceStub(channel)


def test_sdk_create_answers_as_chat_does(client: anthropic.Anthropic, service: Service) -> None:
    message = client.messages.create(model=MODEL_NAME, max_tokens=20, messages=ASK, extra_body=GREEDY)  # type: ignore[arg-type]
    chat = service.openai().chat.completions.create(model=MODEL_NAME, max_tokens=20, messages=ASK, temperature=0)  # type: ignore[arg-type]
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == chat.choices[0].message.content  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert chat.usage is not None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )


def test_stop_reasons_max_tokens_and_stop_sequence(client: anthropic.Anthropic) -> None:
    cut = client.messages.create(model=MODEL_NAME, max_tokens=3, messages=ASK, extra_body=GREEDY)  # type: ignore[arg-type]
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 3)
    whole = client.messages.create(model=MODEL_NAME, max_tokens=20, messages=ASK, extra_body=GREEDY)  # type: ignore[arg-type]
    text = whole.content[0].text  # type: ignore[union-attr]
    assert " is" in text
    stopped = client.messages.create(
        model=MODEL_NAME,
        max_tokens=20,
        messages=ASK,  # type: ignore[arg-type]
        stop_sequences=[" is"],
        extra_body=GREEDY,
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", " is")
    assert stopped.content[0].text == text[: text.index(" is")]  # type: ignore[union-attr]


def test_sdk_stream_assembles_the_same_message(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=MODEL_NAME, max_tokens=12, messages=ASK, extra_body=GREEDY)  # type: ignore[arg-type]
    with client.messages.stream(model=MODEL_NAME, max_tokens=12, messages=ASK, extra_body=GREEDY) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        whole.usage.input_tokens,
        whole.usage.output_tokens,
    )


def test_raw_sse_events_in_anthropic_order(service: Service) -> None:
    body = {"model": MODEL_NAME, "max_tokens": 4, "stream": True, "messages": ASK, "temperature": 0}
    reply = httpx.post(f"{service.http_base}/v1/messages", json=body, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in reply.text
    events = named_events(reply.text)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["output_tokens"] == 0 and start["usage"]["input_tokens"] > 10
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" and d["text"] for d in deltas)
    end = events[-2][1]
    assert end["delta"] == {"stop_reason": "max_tokens"} and end["usage"]["output_tokens"] == 4


def test_count_tokens_is_the_prompt_the_model_sees(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL_NAME, messages=ASK, system="Be brief.")  # type: ignore[arg-type]
    ran = client.messages.create(model=MODEL_NAME, max_tokens=1, messages=ASK, system="Be brief.")  # type: ignore[arg-type]
    assert counted.input_tokens == ran.usage.input_tokens
    longer = client.messages.count_tokens(model=MODEL_NAME, messages=ASK, system="Be brief. One word, please.")  # type: ignore[arg-type]
    assert longer.input_tokens > counted.input_tokens


BAD_BODIES = [
    ({"model": MODEL_NAME, "messages": ASK}, 400, "invalid_request_error", "max_tokens: Field required"),
    ({"model": "nope", "max_tokens": 3, "messages": ASK}, 404, "not_found_error", "does not exist"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": []}, 400, "invalid_request_error", "messages"),
    ({"model": MODEL_NAME, "max_tokens": "3", "messages": ASK}, 400, "invalid_request_error", "'max_tokens'"),
    ({"model": MODEL_NAME, "max_tokens": 0, "messages": ASK}, 400, "invalid_request_error", "max_tokens"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": ASK, "temperature": 1.5}, 400, "invalid_request_error",
     "temperature"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": [{"role": "system", "content": "x"}]}, 400,
     "invalid_request_error", "messages[0].role"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": [{"role": "user", "content": [{"type": "image"}]}]}, 400,
     "invalid_request_error", "messages[0].content[0]"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
     400, "invalid_request_error", "messages[0].content[0].type"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": ASK, "stop_sequences": "x"}, 400, "invalid_request_error",
     "stop_sequences"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": ASK, "thinking": {"type": "enabled"}}, 400,
     "invalid_request_error", "thinking.budget_tokens"),
    ({"model": MODEL_NAME, "max_tokens": 3, "messages": ASK, "tool_choice": {"type": "maybe"}}, 400,
     "invalid_request_error", "tool_choice.type"),
    ({"model": MODEL_NAME, "max_tokens": 10**6, "messages": ASK}, 400, "invalid_request_error", "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "kind", "says"), BAD_BODIES)
def test_bad_requests_get_anthropic_errors(service: Service, body: dict, status: int, kind: str, says: str) -> None:  # type: ignore[type-arg]
    reply = httpx.post(f"{service.http_base}/v1/messages", json=body, timeout=30)
    assert reply.status_code == status
    error = reply.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == kind and says in error["error"]["message"]


def test_gateway_errors_on_messages_paths_are_anthropic_too(service: Service) -> None:
    media = httpx.post(f"{service.http_base}/v1/messages", content=b"{}", headers={"content-type": "text/plain"})
    assert media.status_code == 415 and media.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(f"{service.http_base}/v1/messages/nope", json={})
    assert unknown.status_code == 404 and unknown.json()["type"] == "error"
    assert unknown.json()["error"]["type"] == "not_found_error"
    # Elsewhere the errors stay OpenAI's.
    chat = httpx.post(f"{service.http_base}/v1/chat/completions", content=b"{}", headers={"content-type": "x/y"})
    assert chat.status_code == 415 and chat.json()["error"]["code"] == "unsupported_media_type"


def test_sdk_raises_its_own_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=3, messages=ASK)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL_NAME, max_tokens=3, messages=[{"role": "tool", "content": "x"}])  # type: ignore[list-item, misc]


def test_grpc_messages_match_rest(messages_stub: pb_grpc.MessagesServiceStub, service: Service) -> None:
    body = {"model": MODEL_NAME, "max_tokens": 5, "messages": ASK, "temperature": 0}
    rest = httpx.post(f"{service.http_base}/v1/messages", json=body, timeout=60).json()
    request = json_format.ParseDict(body, pb.CreateMessageRequest())
    reply = json_format.MessageToDict(
        messages_stub.CreateMessage(request, timeout=60), preserving_proto_field_name=True
    )
    assert reply["content"] == rest["content"] and reply["usage"] == rest["usage"]
    assert reply["stop_reason"] == rest["stop_reason"] == "max_tokens"
    events = list(messages_stub.StreamMessage(request, timeout=60))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == rest["content"][0]["text"]
    count = messages_stub.CountMessageTokens(pb.CountMessageTokensRequest(model=MODEL_NAME, messages=request.messages))
    assert count.input_tokens == rest["usage"]["input_tokens"]


def test_grpc_errors_carry_anthropic_json(messages_stub: pb_grpc.MessagesServiceStub) -> None:
    request = pb.CreateMessageRequest(model=MODEL_NAME, messages=[pb.InputMessage(role="user")])
    request.messages[0].content.string_value = "hi"
    with pytest.raises(grpc.RpcError) as failed:
        messages_stub.CreateMessage(request, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(failed.value.trailing_metadata() or ())
    assert json.loads(trailers["x-chatgen-error"]) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


def test_grpc_bytes_that_are_no_message_get_anthropic_json(service: Service) -> None:
    with grpc.insecure_channel(service.grpc_address) as channel:
        call = channel.unary_unary("/chatgen.v1.MessagesService/CreateMessage")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as failed:
            call(b"\xff\xff\xff\xff", timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = json.loads(dict(failed.value.trailing_metadata() or ())["x-chatgen-error"])
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "not a valid protobuf message" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------------------------
# Thinking and tools, on the scripted models


def test_thinking_blocks(thinking_service: Service) -> None:
    client = sdk(thinking_service)
    on = client.messages.create(
        model=THINKING_MODEL_NAME,
        max_tokens=40,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 20},
        extra_body=GREEDY,
    )
    assert [b.type for b in on.content] == ["thinking", "text"]
    assert on.content[0].thinking == REASONING and on.content[1].text == ANSWER  # type: ignore[union-attr]
    off = client.messages.create(
        model=THINKING_MODEL_NAME,
        max_tokens=40,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "disabled"},
        extra_body=GREEDY,
    )
    assert [b.type for b in off.content] == ["text"] and off.content[0].text == ANSWER  # type: ignore[union-attr]
    with client.messages.stream(
        model=THINKING_MODEL_NAME,
        max_tokens=40,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 20},
        extra_body=GREEDY,
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas[0] == "thinking_delta" and deltas[-1] == "text_delta"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == REASONING and final.content[1].text == ANSWER  # type: ignore[union-attr]


def test_tool_use_round_trip(tools_service: Service) -> None:
    client = sdk(tools_service)
    first = client.messages.create(
        model=TOOLS_MODEL_NAME,
        max_tokens=40,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        extra_body=GREEDY,
    )
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id
    history = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
    ]
    counted = client.messages.count_tokens(model=TOOLS_MODEL_NAME, messages=history, tools=[TOOL])  # type: ignore[arg-type, list-item]
    short = client.messages.count_tokens(model=TOOLS_MODEL_NAME, messages=ASK, tools=[TOOL])  # type: ignore[arg-type, list-item]
    assert counted.input_tokens > short.input_tokens
    second = client.messages.create(
        model=TOOLS_MODEL_NAME,
        max_tokens=40,
        messages=history,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        extra_body=GREEDY,
    )
    assert second.usage.input_tokens == counted.input_tokens


def test_streamed_tool_use_and_forced_tool(tools_service: Service) -> None:
    client = sdk(tools_service)
    with client.messages.stream(
        model=TOOLS_MODEL_NAME,
        max_tokens=40,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        extra_body=GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["tool_use"] and starts[0].name == "get_weather"  # type: ignore[union-attr]
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_forced_tool_choice(client: anthropic.Anthropic) -> None:
    """A named tool is decoded under its schema: SmolLM2, which has no tool parser, calls it too."""
    forced = client.messages.create(
        model=MODEL_NAME,
        max_tokens=60,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert forced.stop_reason == "tool_use"
    assert [(b.type, b.name) for b in forced.content] == [("tool_use", "get_weather")]  # type: ignore[union-attr]
    assert isinstance(forced.content[0].input["city"], str)  # type: ignore[union-attr]
    with client.messages.stream(
        model=MODEL_NAME,
        max_tokens=60,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == forced.content[0].input  # type: ignore[union-attr]
