"""The gRPC server in this process, as chatgen.app wires it (on the transformers engine and the real embedded
model): the servicers' replies and REST bodies, the API-key and malformed-message interceptors, and the call log."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.app import build_service
from chatgen.engine.hf_engine import HfEngine
from chatgen.server import GrpcServer
from chatgen.transport.calls import REQUEST_ID_KEY
from chatgen.transport.servicers import SSE_METADATA
from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.unit.conftest import HF_NAME, in_process_settings

KEY = "secret-key"


def chat_request(**fields: object) -> pb.CreateChatCompletionRequest:
    body = {"model": HF_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
    return json_format.ParseDict({**body, **fields}, pb.CreateChatCompletionRequest())


@pytest.fixture(scope="module")
async def server(hf_engine: HfEngine) -> AsyncIterator[GrpcServer]:
    s = build_service(in_process_settings(hf_engine, log_requests=True), hf_engine).server
    await s.start()
    yield s
    await s.stop(0)


@pytest.fixture(scope="module")
async def keyed(hf_engine: HfEngine) -> AsyncIterator[GrpcServer]:
    s = build_service(in_process_settings(hf_engine, api_keys=(KEY,)), hf_engine).server
    await s.start()
    yield s
    await s.stop(0)


async def test_unary_chat_returns_the_request_id_in_its_headers(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
            chat_request(), metadata=((REQUEST_ID_KEY, "unit-1"),), timeout=60
        )
        reply = await call
        assert dict(await call.initial_metadata())[REQUEST_ID_KEY] == "unit-1"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


async def test_a_stream_opens_with_the_role_and_ends_with_usage(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        chunks = [
            c
            async for c in pb_grpc.ChatServiceStub(channel).StreamChatCompletion(
                chat_request(stream_options={"include_usage": True}), timeout=60
            )
        ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1


async def test_a_gateway_stream_ends_with_an_empty_chunk_and_a_grpc_one_does_not(server: GrpcServer) -> None:
    # The gateway marks a REST stream (x-chatgen-stream: sse); its Lua filter writes the empty chunk as [DONE].
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        sse = [c async for c in stub.StreamChatCompletion(chat_request(), metadata=[SSE_METADATA], timeout=60)]
        plain = [c async for c in stub.StreamChatCompletion(chat_request(), timeout=60)]
    assert sse[-1] == pb.StreamChatCompletionResponse() and all(c.id for c in sse[:-1])
    assert len(sse) == len(plain) + 1 and all(c.id for c in plain)
    assert sse[0].choices[0].delta.role == "assistant" and sse[-2].choices[0].finish_reason == "length"


async def test_generate_and_models(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        completion = await pb_grpc.GenerateServiceStub(channel).CreateCompletion(
            pb.CreateCompletionRequest(model=HF_NAME, prompt=struct_pb2.Value(string_value="Once"), max_tokens=2)
        )
        models = pb_grpc.ModelsServiceStub(channel)
        listing = await models.ListModels(pb.ListModelsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await models.GetModel(pb.GetModelRequest(id="other"))
    assert completion.object == "text_completion" and completion.usage.completion_tokens == 2
    assert [m.id for m in listing.data] == [HF_NAME] and listing.data[0].max_model_len == 512
    assert "chat" in listing.data[0].model_ability
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bytes_that_are_no_message_are_invalid_argument(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary("/chatgen.v1.ChatService/CreateChatCompletion")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json.loads(dict(info.value.trailing_metadata())["x-chatgen-error"])["error"]["code"] == "invalid_request"


async def test_api_keys_guard_the_api_but_not_health(keyed: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateChatCompletion(chat_request(), metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "secret" not in (info.value.details() or "")
        reply = await stub.CreateChatCompletion(chat_request(), metadata=(("authorization", f"Bearer {KEY}"),))
        assert reply.usage.completion_tokens == 3
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_each_call_is_logged_once_with_its_tokens(server: GrpcServer) -> None:
    # A handler on the logger itself: vLLM's logging setup (imported by other tests) can disable propagation.
    logger = logging.getLogger("chatgen.requests")
    caplog = _Lines()
    logger.addHandler(caplog)
    logger.disabled, level = False, logger.level
    logger.setLevel(logging.INFO)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        await stub.CreateChatCompletion(chat_request(n=2), metadata=((REQUEST_ID_KEY, "unit-log"),))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CreateChatCompletion(chat_request(temperature=9), metadata=((REQUEST_ID_KEY, "unit-bad"),))
    logger.removeHandler(caplog)
    logger.setLevel(level)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "chatgen.requests"]
    (ok,) = [line for line in lines if line["request_id"] == "unit-log"]
    assert (ok["rpc"], ok["status"], ok["model"], ok["n"], ok["completion_tokens"]) == (
        "CreateChatCompletion", "OK", HF_NAME, 2, 6
    )  # fmt: skip
    assert ok["prompt_tokens"] > 5 and ok["ttft_ms"] > 0 and ok["id"].startswith("chatcmpl-")
    (bad,) = [line for line in lines if line["request_id"] == "unit-bad"]
    assert (bad["status"], bad["completion_tokens"], bad["id"]) == ("INVALID_ARGUMENT", 0, None)
