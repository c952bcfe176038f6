"""chatgen.client (blocking and asyncio) against the real server, and the cross-protocol agreement check."""

from __future__ import annotations

import collections
from typing import Any

import grpc
import pytest

from chatgen.client import AsyncChatgenClient, ChatgenClient, ChatgenError
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class RecordMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def _record(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append(dict(details.metadata or ()))
        return continuation(details, request)

    intercept_unary_unary = _record
    intercept_unary_stream = _record


def test_sync_client_chat_generate_and_stream(service: Service) -> None:
    with ChatgenClient(service.grpc_address) as client:
        assert [m.id for m in client.models()] == [MODEL_NAME]
        result = client.chat(QUESTION, temperature=0)  # model defaults to the server's
        assert "Paris" in result.content
        assert result.finish_reason == "stop"
        assert result.model == MODEL_NAME
        assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
        chunks = list(client.chat_stream(QUESTION, temperature=0, stream_options={"include_usage": True}))
        assert chunks[0].role == "assistant"
        assert "".join(c.content for c in chunks) == result.content
        assert chunks[-1].usage == result.usage
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
        completion = client.generate("The capital of France is", max_tokens=6, temperature=0)
        assert "Paris" in completion.text and completion.finish_reason == "length"
        pieces = list(client.generate_stream("The capital of France is", max_tokens=6, temperature=0))
        assert "".join(p.text for p in pieces) == completion.text


def test_sync_client_errors_are_typed(service: Service) -> None:
    with ChatgenClient(service.grpc_address, model=MODEL_NAME) as client:
        with pytest.raises(ChatgenError) as info:
            client.chat(QUESTION, model="no-such-model")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.param == "model"
        assert info.value.type == "not_found_error"
        with pytest.raises(ChatgenError) as info:
            list(client.chat_stream([], temperature=0))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(TypeError):
            client.chat(QUESTION, no_such_field=1)
        with pytest.raises(ChatgenError) as info:
            client.chat(
                [{"role": "user", "content": "Tell a long story."}], max_tokens=500, ignore_eos=True, timeout=0.3
            )
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_sync_client_sends_metadata(service: Service) -> None:
    recorder = RecordMetadata()
    channel = grpc.intercept_channel(grpc.insecure_channel(service.grpc_address), recorder)
    with ChatgenClient("unused", model=MODEL_NAME, metadata=[("x-team", "search")], channel=channel) as client:
        client.chat(QUESTION, max_tokens=2, metadata=[("x-request-id", "abc")])
        list(client.chat_stream(QUESTION, max_tokens=2))
    assert recorder.seen == [{"x-team": "search", "x-request-id": "abc"}, {"x-team": "search"}]


async def test_async_client(service: Service) -> None:
    async with AsyncChatgenClient(service.grpc_address) as client:
        result = await client.chat(QUESTION, temperature=0)
        assert "Paris" in result.content
        text = "".join([c.content async for c in client.chat_stream(QUESTION, temperature=0)])
        assert text == result.content
        completion = await client.generate("The capital of France is", max_tokens=6, temperature=0)
        assert (
            "".join(
                [c.text async for c in client.generate_stream("The capital of France is", max_tokens=6, temperature=0)]
            )
            == completion.text
        )
        with pytest.raises(ChatgenError) as info:
            await client.generate("", max_tokens=2)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.param == "prompt"


def test_same_answer_over_grpc_rest_and_client(service: Service) -> None:
    """At temperature 0 the one contract gives one answer, whichever way it is called."""
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 48, "stop": ["\n\n"]}
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three colours."}]
    with ChatgenClient(service.grpc_address) as client:
        via_client = client.chat(messages, **params)
        with grpc.insecure_channel(service.grpc_address) as channel:
            from chatgen.client import convert
            from chatgen.v1 import chatgen_pb2_grpc as pb_grpc

            raw = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                convert.chat_request(MODEL_NAME, messages, params)
            )
    rest = service.openai().chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        **params,  # type: ignore[arg-type]
    )
    answers = collections.Counter([via_client.content, raw.choices[0].message.content, rest.choices[0].message.content])
    assert len(answers) == 1, answers
    assert via_client.content
    assert via_client.usage.completion_tokens == raw.usage.completion_tokens == rest.usage.completion_tokens  # type: ignore[union-attr]
