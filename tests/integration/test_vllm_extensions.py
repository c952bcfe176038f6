"""vLLM's response extensions on chat and completions, on the real server (REST through Envoy with the openai
SDK's extra_body, and gRPC): return_token_ids, checked against the model's tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return service.openai()


@pytest.fixture(scope="module")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield channel


def chat_prompt_ids(tokenizer: Any) -> list[int]:
    text = tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_chat_returns_the_prompt_and_choice_token_ids(client: openai.OpenAI, tokenizer: Any) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=8, temperature=0,  # type: ignore[arg-type]
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    extra = reply.model_extra or {}
    assert extra["prompt_token_ids"] == chat_prompt_ids(tokenizer)
    choice = reply.choices[0]
    ids = (choice.model_extra or {})["token_ids"]
    assert len(ids) == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content
    # Streamed: the prompt's ids on the first chunk, each chunk's own ids after, the same tokens in all.
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=8, temperature=0, stream=True,  # type: ignore[arg-type]
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    chunks = list(stream)
    assert (chunks[0].model_extra or {})["prompt_token_ids"] == extra["prompt_token_ids"]
    assert all("prompt_token_ids" not in (c.model_extra or {}) for c in chunks[1:])
    streamed = [t for c in chunks for ch in c.choices for t in (ch.model_extra or {}).get("token_ids", [])]
    assert streamed == ids


def test_without_return_token_ids_no_ids_are_sent(service: Service) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, "max_tokens": 3}
    reply = httpx.post(f"{service.http_base}/v1/chat/completions", json=body, timeout=60).json()
    assert "prompt_token_ids" not in reply and "token_ids" not in reply["choices"][0]


def test_completions_return_each_prompts_ids_with_its_choices(client: openai.OpenAI, tokenizer: Any) -> None:
    prompts = [PROMPT, "Two plus two is"]
    reply = client.completions.create(
        model=MODEL_NAME, prompt=prompts, n=2, max_tokens=4, temperature=0, extra_body={"return_token_ids": True}
    )
    assert len(reply.choices) == 4
    for choice in reply.choices:
        extra = choice.model_extra or {}
        assert extra["prompt_token_ids"] == tokenizer.encode(prompts[choice.index // 2])
        assert tokenizer.decode(extra["token_ids"]) == choice.text
    stream = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    chunks = [c for c in stream if c.choices]
    firsts = [(c.choices[0].model_extra or {}).get("prompt_token_ids") for c in chunks]
    assert firsts[0] == tokenizer.encode(PROMPT) and not any(firsts[1:])
    streamed = [t for c in chunks for t in (c.choices[0].model_extra or {}).get("token_ids", [])]
    assert len(streamed) == 6 and tokenizer.decode(streamed) == "".join(c.choices[0].text for c in chunks)


def test_token_ids_over_grpc(channel: grpc.Channel, tokenizer: Any) -> None:
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "messages": ASK, "max_tokens": 5, "temperature": 0, "return_token_ids": True},
        pb.CreateChatCompletionRequest(),
    )
    chat = pb_grpc.ChatServiceStub(channel)
    reply = chat.CreateChatCompletion(request, timeout=120)
    assert list(reply.prompt_token_ids) == chat_prompt_ids(tokenizer)
    assert len(reply.choices[0].token_ids) == reply.usage.completion_tokens
    chunks = list(chat.StreamChatCompletion(request, timeout=120))
    assert list(chunks[0].prompt_token_ids) == list(reply.prompt_token_ids)
    assert [t for c in chunks for ch in c.choices for t in ch.token_ids] == list(reply.choices[0].token_ids)
    completion = json_format.ParseDict(
        {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "return_token_ids": True},
        pb.CreateCompletionRequest(),
    )
    done = pb_grpc.GenerateServiceStub(channel).CreateCompletion(completion, timeout=120)
    assert list(done.choices[0].prompt_token_ids) == tokenizer.encode(PROMPT)
    assert tokenizer.decode(list(done.choices[0].token_ids)) == done.choices[0].text
