"""response_format: json_object and json_schema are enforced while decoding, on both engines."""

from __future__ import annotations

import json
import re
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

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 50},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
SCHEMA_PARAM = "response_format.json_schema.schema"
ASK = [{"role": "user", "content": "Give the capital of France as JSON with city, country and population."}]


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return service.openai()


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
    )
    assert reply.choices[0].finish_reason == "stop"
    data = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(data, SCHEMA)


def test_json_object_output_parses_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=120,
        stream=True,
        response_format={"type": "json_object"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


def test_completions_json_schema_over_grpc(service: Service) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
    request = json_format.ParseDict(
        {
            "model": MODEL_NAME,
            "prompt": "Is Paris in France? Reply in JSON:",
            "max_tokens": 40,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "yes_no", "schema": schema}},
        },
        pb.CreateCompletionRequest(),
    )
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=120)
    jsonschema.validate(json.loads(reply.choices[0].text), schema)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, SCHEMA_PARAM),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_response_format(client: openai.OpenAI, response_format: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=ASK, response_format=response_format)  # type: ignore[arg-type]
    assert info.value.body["param"] == param  # type: ignore[index]


# vLLM's structured_outputs, through the openai SDK's extra_body as vLLM's clients send it.
STRUCTURED = [
    ({"regex": "[0-9]{3}-[A-Z]{2}"}, lambda text: re.fullmatch("[0-9]{3}-[A-Z]{2}", text)),
    ({"choice": ["Paris", "Lyon", "Nice"]}, lambda text: text in ("Paris", "Lyon", "Nice")),
    ({"grammar": 'root ::= "It is " ("yes" | "no")'}, lambda text: text in ("It is yes", "It is no")),
    ({"grammar": 'start: "ok" ("!")*'}, lambda text: re.fullmatch("ok!*", text)),
    ({"json": SCHEMA}, lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    ({"json": json.dumps(SCHEMA)}, lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    ({"json_object": True}, lambda text: isinstance(json.loads(text), dict)),
]  # fmt: skip


@pytest.mark.parametrize(("structured", "holds"), STRUCTURED, ids=[next(iter(s)) for s, _ in STRUCTURED])
def test_structured_outputs_hold_chat_output(client: openai.OpenAI, structured: dict[str, Any], holds: Any) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, temperature=0, max_tokens=120,  # type: ignore[arg-type]
        extra_body={"structured_outputs": structured},
    )  # fmt: skip
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "stop", text
    assert holds(text), text


def test_structured_outputs_hold_streamed_completions_and_grpc(client: openai.OpenAI, service: Service) -> None:
    stream = client.completions.create(
        model=MODEL_NAME, prompt="A date:", temperature=1.0, seed=11, max_tokens=30, stream=True,
        extra_body={"structured_outputs": {"regex": "20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"}},
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert re.fullmatch("20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", text), text
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "prompt": "Pick one:", "max_tokens": 10, "temperature": 1.0, "seed": 3, "n": 4,
         "structured_outputs": {"choice": ["red", "green", "blue"]}},
        pb.CreateCompletionRequest(),
    )  # fmt: skip
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=120)
    assert len(reply.choices) == 4 and {c.text for c in reply.choices} <= {"red", "green", "blue"}


@pytest.mark.parametrize(
    ("structured", "param", "words"),
    [
        ({"regex": "[0-9"}, "structured_outputs.regex", "cannot be used for decoding"),
        ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar", "cannot be used for decoding"),
        ({"grammar": ""}, "structured_outputs.grammar", "empty"),
        ({"json": {"type": "object", "$ref": "#/$defs/none"}}, "structured_outputs.json", "cannot be used"),
        ({"json": "{oops"}, "structured_outputs.json", "not valid JSON"),
        ({"choice": []}, "structured_outputs", "exactly one"),
        ({"regex": "a", "choice": ["b"]}, "structured_outputs", "exactly one"),
        ({"regex": 5}, "structured_outputs.regex", "string"),
        ({"regex": "a", "structural_tag": "{}"}, "structured_outputs.structural_tag", "not served"),
    ],
)
def test_bad_structured_outputs_are_400_before_anything_runs(
    service: Service, structured: dict[str, Any], param: str, words: str
) -> None:
    for path, body in (("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "x"})):
        reply = httpx.post(
            f"{service.http_base}{path}",
            json={"model": MODEL_NAME, **body, "structured_outputs": structured},
            timeout=60,
        )
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == param and words in error["message"], error
