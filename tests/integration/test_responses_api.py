"""The OpenAI Responses API (/v1/responses, ResponsesService) with the real openai SDK, raw SSE bytes and gRPC, on
the embedded model (both engines), the scripted thinking model and the scripted tool caller; its store (SQLite by
default) with previous_response_id, retrieve, delete and input_items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jsonschema
import openai
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service
from tests.integration.test_observability import log_line
from tests.support.error_rows import check_row
from tests.support.models import ANSWER, REASONING, THINKING_MODEL_NAME, TOOLS_MODEL_NAME
from tests.support.sse import named_events

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
ASK = [{"role": "user", "content": QUESTION}]
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def chat_text(service: Service, messages: list[dict[str, Any]], max_tokens: int) -> str:
    reply = service.openai().chat.completions.create(
        model=MODEL_NAME,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return service.openai()


@pytest.fixture(scope="module")
def responses_stub(service: Service) -> Iterator[pb_grpc.ResponsesServiceStub]:
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield pb_grpc.ResponsesServiceStub(channel)


def test_create_answers_as_chat_does(client: openai.OpenAI, service: Service) -> None:
    response = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=20, temperature=0)
    chat = service.openai().chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == chat.choices[0].message.content
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert item.content[0].type == "output_text"  # type: ignore[union-attr]
    assert response.usage is not None and chat.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert (response.max_output_tokens, response.temperature, response.store) == (20, 0, True)


def test_instructions_are_the_system_message(client: openai.OpenAI, service: Service) -> None:
    instructions = "Answer in one word."
    response = client.responses.create(
        model=MODEL_NAME, instructions=instructions, input=QUESTION, max_output_tokens=12, temperature=0
    )
    expected = chat_text(service, [{"role": "system", "content": instructions}, *ASK], 12)
    assert response.output_text == expected and response.instructions == instructions


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=3, temperature=0)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.output[0].status == "incomplete"


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, service: Service) -> None:
    first = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=12, temperature=0)
    follow = "And of Germany?"
    second = client.responses.create(
        model=MODEL_NAME, previous_response_id=first.id, input=follow, max_output_tokens=12, temperature=0
    )
    whole = [*ASK, {"role": "assistant", "content": first.output_text}, {"role": "user", "content": follow}]
    assert second.output_text == chat_text(service, whole, 12)
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_retrieve_input_items_and_delete(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=6, temperature=0)
    second = client.responses.create(
        model=MODEL_NAME, previous_response_id=first.id, input="Why?", max_output_tokens=6, temperature=0
    )
    again = client.responses.retrieve(second.id)
    assert again.id == second.id and again.output_text == second.output_text
    assert again.usage == second.usage
    items = client.responses.input_items.list(second.id).data
    # Newest first: this turn's input, the first response's output, then its input.
    texts = [item.content[0].text for item in items]  # type: ignore[union-attr]
    assert texts == ["Why?", first.output_text, QUESTION]
    assert [item.role for item in items] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert all(item.id for item in items) and items[1].id == first.output[0].id
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(second.id)
    assert gone.value.code == "response_not_found" and second.id in gone.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(second.id)
    assert client.responses.retrieve(first.id).id == first.id


def test_calls_are_logged_with_their_tokens(service: Service) -> None:
    body = {"model": MODEL_NAME, "input": QUESTION, "max_output_tokens": 3, "temperature": 0}
    reply = httpx.post(f"{service.http_base}/v1/responses", json=body, headers={"x-request-id": "resp-log-1"})
    assert reply.status_code == 200
    line = log_line(service, "resp-log-1")
    assert (line["rpc"], line["status"], line["completion_tokens"]) == ("CreateResponse", "OK", 3)
    got = httpx.get(f"{service.http_base}/v1/responses/{reply.json()['id']}", headers={"x-request-id": "resp-log-2"})
    assert got.status_code == 200 and log_line(service, "resp-log-2")["rpc"] == "GetResponse"
    # Envoy renders the stored response (the typed GetResponse, transcoded) as the server rendered its create reply.
    assert got.json() == reply.json()


def test_unknown_previous_response_is_404(service: Service) -> None:
    body = {"model": MODEL_NAME, "input": "hi", "previous_response_id": "resp_nope"}
    reply = httpx.post(f"{service.http_base}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 404
    error = reply.json()["error"]
    check_row("unknown-response", error)
    assert error["param"] == "previous_response_id" and "resp_nope" in error["message"]
    # A stream that cannot start is the same HTTP error, not a stream.
    streamed = httpx.post(f"{service.http_base}/v1/responses", json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 404 and streamed.json()["error"]["code"] == "response_not_found"
    for path in ("/v1/responses/resp_nope", "/v1/responses/resp_nope/input_items"):
        got = httpx.get(f"{service.http_base}{path}", timeout=30)
        assert got.status_code == 404 and got.json()["error"]["code"] == "response_not_found"


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_NAME, input=QUESTION, max_output_tokens=4, temperature=0, store=False
    )
    assert response.store is False and response.status == "incomplete"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL_NAME, input="more", previous_response_id=response.id)


def test_whole_history_in_input_as_codex_sends_it(client: openai.OpenAI, service: Service) -> None:
    history: list[Any] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
        {"role": "user", "content": "And of Italy?"},
    ]
    response = client.responses.create(
        model=MODEL_NAME, input=history, max_output_tokens=10, temperature=0, store=False
    )
    expected = chat_text(
        service,
        [
            {"role": "developer", "content": "Be brief."},
            *ASK,
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        10,
    )
    assert response.output_text == expected


def test_sdk_stream_assembles_the_same_response(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=12, temperature=0)
    with client.responses.stream(model=MODEL_NAME, input=QUESTION, max_output_tokens=12, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == final.output_text == whole.output_text
    assert final.status == "completed" and final.usage == whole.usage
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_raw_sse_events_in_openai_order(service: Service) -> None:
    body = {"model": MODEL_NAME, "input": QUESTION, "max_output_tokens": 4, "temperature": 0, "stream": True}
    reply = httpx.post(f"{service.http_base}/v1/responses", json=body, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in reply.text
    events = named_events(reply.text)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.incomplete"
    assert names.count("response.output_text.delta") == 4
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"].startswith("resp_")
    added = events[2][1]
    assert added["output_index"] == 0 and added["item"]["status"] == "in_progress"
    delta = next(data for name, data in events if name == "response.output_text.delta")
    assert delta["item_id"] == added["item"]["id"] and delta["content_index"] == 0
    end = events[-1][1]["response"]
    assert end["id"] == created["id"] and end["incomplete_details"] == {"reason": "max_output_tokens"}
    assert end["usage"]["output_tokens"] == 4 and end["output"][0]["content"][0]["text"]


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL_NAME,
        input="Name the capital of France as JSON.",
        max_output_tokens=40,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_grpc_matches_rest(responses_stub: pb_grpc.ResponsesServiceStub, service: Service) -> None:
    body = {"model": MODEL_NAME, "input": QUESTION, "max_output_tokens": 8, "temperature": 0, "store": False}
    rest = httpx.post(f"{service.http_base}/v1/responses", json=body, timeout=60).json()
    request = json_format.ParseDict(body, pb.CreateResponseRequest())
    reply = responses_stub.CreateResponse(request, timeout=60)
    unary = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert unary["output"][0]["content"] == rest["output"][0]["content"]
    assert unary["usage"] == rest["usage"] and unary["status"] == rest["status"]
    streamed = list(responses_stub.StreamResponse(request, timeout=60))
    sse = named_events(httpx.post(f"{service.http_base}/v1/responses", json={**body, "stream": True}).text)
    assert [e.type for e in streamed] == [name for name, _ in sse]
    assert [e.sequence_number for e in streamed] == list(range(len(streamed)))
    text = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")
    assert text == rest["output"][0]["content"][0]["text"]


def test_grpc_unknown_response_is_not_found(responses_stub: pb_grpc.ResponsesServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        responses_stub.GetResponse(pb.GetResponseRequest(response_id="resp_nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        responses_stub.DeleteResponse(pb.DeleteResponseRequest(response_id="resp_nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


BAD = {
    "no input": ({}, "input"),
    "input a number": ({"input": 3}, "input"),
    "empty input": ({"input": []}, "input"),
    "item not an object": ({"input": ["hi"]}, "input[0]"),
    "unknown role": ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    "unknown item type": ({"input": [{"type": "teleport"}]}, "input[0].type"),
    "image part": (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input[0].content[0].type",
    ),
    "function call without arguments": (
        {"input": [{"type": "function_call", "call_id": "c1", "name": "f"}]},
        "input[0].arguments",
    ),
    "web search tool": ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    "tool without a name": ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    "bad tool_choice": ({"input": "hi", "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    "bad text format": ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    "json_schema without schema": (
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format.schema",
    ),
    "bad effort": ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    "negative max_output_tokens": ({"input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
    "temperature a string": ({"input": "hi", "temperature": "hot"}, "temperature"),
    "too much metadata": ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    "store a string": ({"input": "hi", "store": "yes"}, "store"),
    "background": ({"input": "hi", "background": True}, "background"),
    "logprobs included": ({"input": "hi", "include": ["message.output_text.logprobs"]}, "include"),
    "truncation auto": ({"input": "hi", "truncation": "auto"}, "truncation"),
}
UNSERVED = {"image part", "web search tool", "background", "logprobs included", "truncation auto"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_openai_errors(service: Service, case: str) -> None:
    body, param = BAD[case]
    reply = httpx.post(f"{service.http_base}/v1/responses", json={"model": MODEL_NAME, **body}, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or (error["param"] or "").startswith(param), error
    assert (error["code"] == "unsupported_parameter") == (case in UNSERVED), error


def test_thinking_model_gives_a_reasoning_item(thinking_service: Service) -> None:
    client = thinking_service.openai()
    response = client.responses.create(model=THINKING_MODEL_NAME, input=QUESTION, max_output_tokens=40)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.content[0].text.strip() == REASONING.strip()  # type: ignore[union-attr]
    assert response.output_text == ANSWER
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 5
    off = client.responses.create(
        model=THINKING_MODEL_NAME, input=QUESTION, max_output_tokens=40, reasoning={"effort": "none"}
    )
    assert [item.type for item in off.output] == ["message"] and off.output_text == ANSWER
    switched = client.responses.create(
        model=THINKING_MODEL_NAME, input=QUESTION, max_output_tokens=40, extra_body={"enable_thinking": False}
    )
    assert [item.type for item in switched.output] == ["message"] and switched.output_text == ANSWER
    with client.responses.stream(model=THINKING_MODEL_NAME, input=QUESTION, max_output_tokens=40) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    assert [item.type for item in final.output] == ["reasoning", "message"] and final.output_text == ANSWER


def test_function_tool_round_trip(tools_service: Service) -> None:
    client = tools_service.openai()
    first = client.responses.create(model=TOOLS_MODEL_NAME, input=QUESTION, tools=[TOOL], max_output_tokens=40)  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id and call.id.startswith("fc_")
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    second = client.responses.create(
        model=TOOLS_MODEL_NAME,
        previous_response_id=first.id,
        input=[output],  # type: ignore[list-item]
        tools=[TOOL],  # type: ignore[list-item]
        max_output_tokens=40,
    )
    assert second.status == "completed" and second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    items = client.responses.input_items.list(second.id).data
    assert [item.type for item in items] == ["function_call_output", "function_call", "message"]
    with client.responses.stream(model=TOOLS_MODEL_NAME, input=QUESTION, tools=[TOOL], max_output_tokens=40) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["function_call"]
    assert final.output[0].name == "get_weather"  # type: ignore[union-attr]
