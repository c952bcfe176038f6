"""The gRPC API on the real server (vLLM engine, embedded SmolLM2)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.grpc_address) as ch:
        yield ch


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role="user", content=struct_pb2.Value(string_value=text))


def chat_request(text: str = QUESTION, **kw) -> pb.CreateChatCompletionRequest:  # type: ignore[no-untyped-def]
    kw.setdefault("temperature", 0.0)
    return pb.CreateChatCompletionRequest(model=MODEL_NAME, messages=[user(text)], **kw)


def expected_prompt_tokens(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return len(tokenizer.encode(rendered, add_special_tokens=False))


def test_chat_unary_answers_paris_with_exact_usage(channel: grpc.Channel, tokenizer) -> None:  # type: ignore[no-untyped-def]
    reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(chat_request(), timeout=60)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL_NAME
    assert reply.created > 1_700_000_000
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens == expected_prompt_tokens(tokenizer, QUESTION)
    # The model ends with its EOS token (<|im_end|>), which counts as generated but is not in the text.
    content_tokens = len(tokenizer.encode(choice.message.content, add_special_tokens=False))
    assert reply.usage.completion_tokens == content_tokens + 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_matches_unary_text(channel: grpc.Channel) -> None:
    stub = pb_grpc.ChatServiceStub(channel)
    unary = stub.CreateChatCompletion(chat_request(max_tokens=40), timeout=60)
    chunks = list(
        stub.StreamChatCompletion(chat_request(max_tokens=40, stream_options={"include_usage": True}), timeout=60)
    )
    assert len(chunks) >= 4
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first = chunks[0].choices[0]
    assert first.delta.HasField("role") and first.delta.role == "assistant"
    assert not any(c.choices[0].delta.HasField("role") for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].HasField("finish_reason")]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason == unary.choices[0].finish_reason
    usage_chunk = chunks[-1]
    assert list(usage_chunk.choices) == []
    assert usage_chunk.usage.completion_tokens == unary.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == unary.usage.prompt_tokens
    # gRPC callers never see the gateway's SSE terminator.
    assert not any(c.object == "[DONE]" for c in chunks)


def test_max_tokens_gives_length(channel: grpc.Channel) -> None:
    reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
        chat_request("Write a long story about a dragon.", max_tokens=5), timeout=60
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_generate_unary_and_stream_agree(channel: grpc.Channel, tokenizer) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GenerateServiceStub(channel)
    prompt = struct_pb2.Value(string_value="The capital of France is")
    req = pb.CreateCompletionRequest(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0.0)
    unary = stub.CreateCompletion(req, timeout=60)
    assert unary.object == "text_completion"
    assert unary.id.startswith("cmpl-")
    assert "Paris" in unary.choices[0].text
    assert unary.choices[0].finish_reason == "length"
    assert unary.usage.completion_tokens == 12
    assert unary.usage.prompt_tokens == len(tokenizer.encode("The capital of France is"))
    chunks = list(stub.StreamCompletion(req, timeout=60))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == unary.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_is_excluded(channel: grpc.Channel) -> None:
    stop = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value="Paris")]))
    reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(chat_request(stop=stop), timeout=60)
    text = reply.choices[0].message.content
    assert "Paris" not in text
    assert text.startswith("The capital of France is")
    assert reply.choices[0].finish_reason == "stop"


def test_content_parts_are_joined(channel: grpc.Channel) -> None:
    parts = struct_pb2.Value()
    parts.list_value.values.add().struct_value.update({"type": "text", "text": "What is the capital "})
    parts.list_value.values.add().struct_value.update({"type": "text", "text": "of France?"})
    req = pb.CreateChatCompletionRequest(
        model=MODEL_NAME, messages=[pb.ChatMessage(role="user", content=parts)], temperature=0
    )
    plain = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(chat_request(), timeout=60)
    joined = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(req, timeout=60)
    assert joined.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (
            pb.CreateChatCompletionRequest(model="no-such-model", messages=[user("hi")]),
            grpc.StatusCode.NOT_FOUND,
            "model",
        ),
        (pb.CreateChatCompletionRequest(model=MODEL_NAME), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (pb.CreateChatCompletionRequest(messages=[user("hi")]), grpc.StatusCode.INVALID_ARGUMENT, "model"),
        (
            pb.CreateChatCompletionRequest(
                model=MODEL_NAME, messages=[pb.ChatMessage(role="wizard", content=struct_pb2.Value(string_value="x"))]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[0].role",
        ),
        (chat_request(temperature=3.5), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (chat_request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (chat_request(max_tokens=100_000), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (chat_request("word " * 3000), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
    ],
    ids=[
        "unknown-model",
        "no-messages",
        "no-model",
        "bad-role",
        "temperature",
        "max-tokens-0",
        "max-tokens-huge",
        "too-long",
    ],
)
def test_bad_requests_get_status_and_openai_error(channel: grpc.Channel, request_, code, param) -> None:  # type: ignore[no-untyped-def]

    for call in (
        pb_grpc.ChatServiceStub(channel).CreateChatCompletion,
        lambda r, timeout: list(pb_grpc.ChatServiceStub(channel).StreamChatCompletion(r, timeout=timeout)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request_, timeout=30)
        assert info.value.code() == code
        trailers = dict(info.value.trailing_metadata() or ())
        body = json.loads(trailers["x-chatgen-error"])
        assert body["error"]["param"] == param
        assert body["error"]["message"] == info.value.details()
        # The same error as google.rpc.Status (AIP-193), as a client in any language decodes it.
        status = rpc_status.from_call(info.value)
        assert status is not None and status.code == code.value[0] and status.message == info.value.details()
        reasons, fields = [], []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(error_info)
                reasons.append((error_info.reason, error_info.domain))
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
        assert reasons == [(body["error"]["code"].upper(), "chatgen.v1")]
        assert fields == [param]
    # The server keeps serving after every error.
    assert (
        "Paris"
        in pb_grpc.ChatServiceStub(channel).CreateChatCompletion(chat_request(), timeout=60).choices[0].message.content
    )


def test_generate_rejects_bad_prompt(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.GenerateServiceStub(channel).CreateCompletion(pb.CreateCompletionRequest(model=MODEL_NAME), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_models_list_and_get(channel: grpc.Channel) -> None:
    stub = pb_grpc.ModelsServiceStub(channel)
    listing = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert listing.object == "list"
    assert [m.id for m in listing.data] == [MODEL_NAME]
    assert listing.data[0].max_model_len == 2048
    assert listing.data[0].model_type == "LLM"
    # SmolLM2 has a chat template and no reasoning parser is configured.
    assert list(listing.data[0].model_ability) == ["generate", "chat"]
    assert stub.GetModel(pb.GetModelRequest(id=MODEL_NAME), timeout=10).id == MODEL_NAME
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModel(pb.GetModelRequest(id="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancelled_stream_leaves_server_serving(channel: grpc.Channel) -> None:
    stub = pb_grpc.ChatServiceStub(channel)
    call = stub.StreamChatCompletion(
        chat_request("Write a very long story.", max_tokens=1000, ignore_eos=True), timeout=120
    )
    received = [next(call) for _ in range(3)]
    assert len(received) == 3
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert "Paris" in stub.CreateChatCompletion(chat_request(), timeout=60).choices[0].message.content


def test_server_runs_the_requested_engine(service: Service) -> None:
    ready = [line for line in service.log if "[chatgen] ready:" in line]
    assert len(ready) == 1
    assert f"model '{MODEL_NAME}' ({service.engine})" in ready[0]


def test_the_server_runs_on_uvloop(service: Service) -> None:
    starting = [line for line in service.log if "[chatgen] starting the" in line]
    assert len(starting) == 1 and starting[0].rstrip().endswith("(uvloop event loop)"), starting


def test_the_start_up_heap_is_frozen_out_of_the_garbage_collectors_reach(service: Service) -> None:
    # Else every full collection walks torch's, transformers' and vLLM's objects: a pause of ≈ 300 ms that stalls
    # every stream in flight.
    frozen = [line for line in service.log if "start-up objects frozen out of the garbage collector's reach" in line]
    assert len(frozen) == 1
    assert int(frozen[0].removeprefix("[chatgen] ").split()[0]) > 100_000, frozen


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    services = (
        "ChatService",
        "GenerateService",
        "MessagesService",
        "ResponsesService",
        "TokenizerService",
        "ServingService",
        "ModelsService",
    )
    for service in ("", *(f"chatgen.v1.{name}" for name in services)):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "chatgen.v1.ChatService",
        "chatgen.v1.GenerateService",
        "chatgen.v1.MessagesService",
        "chatgen.v1.ResponsesService",
        "chatgen.v1.TokenizerService",
        "chatgen.v1.ServingService",
        "chatgen.v1.ModelsService",
        "grpc.health.v1.Health",
    } <= names
