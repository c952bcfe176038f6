"""Tool calling with vLLM's hermes parser, on a scripted Hermes-format model that always calls get_weather."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import jsonschema
import openai
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service
from tests.support.models import TOOLS_MODEL_NAME

pytestmark = pytest.mark.integration

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tools_service: Service) -> openai.OpenAI:
    return tools_service.openai()


@pytest.fixture(scope="module")
def chat(tools_service: Service) -> Iterator[pb_grpc.ChatServiceStub]:
    with grpc.insecure_channel(tools_service.grpc_address) as channel:
        yield pb_grpc.ChatServiceStub(channel)


def test_openai_sdk_unary_tool_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=TOOLS_MODEL_NAME, messages=ASK, tools=TOOLS, temperature=0)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_openai_sdk_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=TOOLS_MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    ids, names, arguments, finishes = set(), "", "", []
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                names += call.function.name
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert len(ids) == 1
    assert names == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}
    assert finishes == ["tool_calls"]


def test_grpc_tool_call_and_history(chat: pb_grpc.ChatServiceStub) -> None:
    def request(messages: list[dict[str, object]], **extra: object) -> pb.CreateChatCompletionRequest:
        body = {"model": TOOLS_MODEL_NAME, "messages": messages, "tools": TOOLS, "temperature": 0, **extra}
        return json_format.ParseDict(body, pb.CreateChatCompletionRequest())

    first = chat.CreateChatCompletion(request(ASK), timeout=60).choices[0]
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    assert (call.type, call.function.name) == ("function", "get_weather")
    # Feed the call and its result back, as an agent loop does: the history renders and is accepted.
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [json_format.MessageToDict(call)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    again = chat.CreateChatCompletion(request(history), timeout=60)
    assert again.usage.prompt_tokens > chat.CreateChatCompletion(request(ASK), timeout=60).usage.prompt_tokens


def test_tool_choice_none_returns_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TOOLS_MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert "<tool_call>" in (choice.message.content or "")


@pytest.mark.parametrize(
    "tool_choice",
    ["sometimes", {"type": "function", "function": {"name": "not_a_tool"}}, {"type": "function"}],
)
def test_bad_tool_choice_is_a_clear_400(client: openai.OpenAI, tool_choice: object) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TOOLS_MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=tool_choice)  # type: ignore[arg-type]
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


# Forcing a call needs no tool-call parser: the output is constrained to the call's JSON. SmolLM2 (no parser,
# no tools in its template) shows it.
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_named_tool_choice_forces_that_call(service: Service) -> None:
    client = service.openai()
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        temperature=0,
        max_tokens=60,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's finish_reason for a named function
    call = (choice.message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments["city"], str)
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        temperature=0,
        max_tokens=60,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c for chunk in stream for c in (chunk.choices[0].delta.tool_calls or [])]
    assert pieces[0].id and pieces[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == arguments  # type: ignore[union-attr]


def test_required_tool_choice_forces_a_call(service: Service) -> None:
    client = service.openai()
    tools = [*TOOLS, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL_NAME, messages=ASK, tools=tools, tool_choice="required", temperature=0,  # type: ignore[arg-type]
                    max_tokens=80, stream=True,
                )
            )  # fmt: skip
            calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
            finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices[0].finish_reason]
        else:
            reply = client.chat.completions.create(
                model=MODEL_NAME,
                messages=ASK,
                tools=tools,
                tool_choice="required",
                temperature=0,
                max_tokens=80,  # type: ignore[arg-type]
            )
            calls = list(reply.choices[0].message.tool_calls or [])
            finish = [reply.choices[0].finish_reason]
        assert finish == ["tool_calls"]
        assert len(calls) >= 1
        for call in calls:
            assert call.function.name in ("get_weather", "get_time")  # type: ignore[union-attr]
            assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]
    single = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=tools, tool_choice="required", temperature=0,  # type: ignore[arg-type]
        max_tokens=80, parallel_tool_calls=False,
    )  # fmt: skip
    assert len(single.choices[0].message.tool_calls or []) == 1


# Parameters that reference definitions of their own, as pydantic's model_json_schema() writes them.
BOOKING = {
    "type": "function",
    "function": {
        "name": "book",
        "parameters": {
            "type": "object",
            "properties": {"where": {"$ref": "#/$defs/Place"}, "back": {"$ref": "#/$defs/Place"}},
            "required": ["where"],
            "$defs": {
                "Place": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                    "additionalProperties": False,
                }
            },
        },
    },
}


def test_required_tool_choice_with_referencing_parameters(service: Service) -> None:
    """References resolve once the parameters sit inside the schema of all tools (they pointed at nothing)."""
    reply = service.openai().chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=[BOOKING, *TOOLS], tool_choice="required", temperature=0,  # type: ignore[arg-type]
        max_tokens=120, parallel_tool_calls=False,
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls or []
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    parameters = {"book": BOOKING, "get_weather": TOOLS[0]}[call.function.name]["function"]["parameters"]  # type: ignore[union-attr,index]
    jsonschema.validate(arguments, parameters)


def test_a_named_call_cut_by_max_tokens_is_no_call(service: Service) -> None:
    """As vLLM: arguments that never closed are not a call; finish_reason says why."""
    reply = service.openai().chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0,  # type: ignore[arg-type]
        max_completion_tokens=2,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_model_declares_tools(client: openai.OpenAI) -> None:
    model = client.models.retrieve(TOOLS_MODEL_NAME)
    assert (model.model_extra or {})["model_ability"] == ["generate", "chat", "tools"]


def test_tools_without_a_parser_are_rejected(service: Service) -> None:
    client = service.openai()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    assert info.value.body["param"] == "tools"  # type: ignore[index]
