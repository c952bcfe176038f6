"""response_format: json_object and json_schema are enforced while decoding, on both engines."""

from __future__ import annotations

import json

import grpc
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
