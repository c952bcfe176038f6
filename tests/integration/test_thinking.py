"""Thinking switch and reasoning split, on a Qwen3-style thinking model with vLLM's qwen3 reasoning parser.

The model is a scripted tiny model (tests/support): with thinking on it emits
`<think> the user asks about France</think>The capital is Paris.`; with enable_thinking=false its template closes
the think block in the prompt and it answers directly. Both engines serve it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import Service
from tests.integration.test_rest_api import sse_events
from tests.support.models import ANSWER, REASONING, THINKING_MODEL_NAME

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def chat(thinking_service: Service) -> Iterator[pb_grpc.ChatServiceStub]:
    with grpc.insecure_channel(thinking_service.grpc_address) as channel:
        yield pb_grpc.ChatServiceStub(channel)


@pytest.fixture(scope="module")
def client(thinking_service: Service) -> openai.OpenAI:
    return thinking_service.openai()


def request(**fields: object) -> pb.CreateChatCompletionRequest:
    body = {"model": THINKING_MODEL_NAME, "messages": MESSAGES, "temperature": 0, **fields}
    return json_format.ParseDict(body, pb.CreateChatCompletionRequest())


def test_grpc_thinking_on_splits_reasoning_from_answer(chat: pb_grpc.ChatServiceStub) -> None:
    message = chat.CreateChatCompletion(request(), timeout=60).choices[0].message
    assert message.content == ANSWER
    assert message.reasoning_content == REASONING
    assert "<think>" not in message.content and "</think>" not in message.content


@pytest.mark.parametrize(
    "switch",
    [
        {"enable_thinking": False},
        {"chat_template_kwargs": {"enable_thinking": False}},
        # chat_template_kwargs wins over the shorthand.
        {"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}},
    ],
    ids=["enable_thinking", "chat_template_kwargs", "kwargs-win"],
)
def test_grpc_thinking_off_answers_without_reasoning(chat: pb_grpc.ChatServiceStub, switch: dict[str, object]) -> None:
    reply = chat.CreateChatCompletion(request(**switch), timeout=60)
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert not message.HasField("reasoning_content")
    # The prompt carried the closed think block (4 more tokens) and the model skipped straight to the answer.
    on = chat.CreateChatCompletion(request(), timeout=60)
    assert reply.usage.prompt_tokens == on.usage.prompt_tokens + 4
    assert reply.usage.completion_tokens == 6


def test_grpc_stream_sends_reasoning_then_content(chat: pb_grpc.ChatServiceStub) -> None:
    chunks = list(chat.StreamChatCompletion(request(), timeout=60))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(d.reasoning_content for d in deltas)
    content = "".join(d.content for d in deltas)
    assert reasoning == REASONING
    assert content == ANSWER
    kinds = ["r" if d.HasField("reasoning_content") else "c" for d in deltas[1:] if d.reasoning_content or d.content]
    assert kinds == sorted(kinds, key=lambda k: k == "c"), "all reasoning comes before any answer text"


def test_openai_sdk_reasoning_content_and_switch(client: openai.OpenAI) -> None:
    on = client.chat.completions.create(model=THINKING_MODEL_NAME, messages=MESSAGES, temperature=0)  # type: ignore[arg-type]
    assert on.choices[0].message.content == ANSWER
    # Under Xinference's name and vLLM's current one.
    assert on.choices[0].message.model_extra == {"reasoning_content": REASONING, "reasoning": REASONING}
    off = client.chat.completions.create(
        model=THINKING_MODEL_NAME,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        extra_body={"enable_thinking": False},
    )
    assert off.choices[0].message.content == ANSWER
    assert "reasoning_content" not in (off.choices[0].message.model_extra or {})
    stream = client.chat.completions.create(
        model=THINKING_MODEL_NAME,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
    )
    reasoning, content, named = "", "", ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        named += (delta.model_extra or {}).get("reasoning") or ""
        content += delta.content or ""
    assert (reasoning, named, content) == (REASONING, REASONING, ANSWER)


def test_raw_sse_reasoning_deltas(thinking_service: Service) -> None:
    body = {"model": THINKING_MODEL_NAME, "messages": MESSAGES, "temperature": 0, "stream": True}
    response = httpx.post(f"{thinking_service.http_base}/v1/chat/completions", json=body, timeout=60)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert {"reasoning_content": " the", "reasoning": " the"} in deltas
    assert all(not ("reasoning_content" in d and "content" in d) for d in deltas[1:])


def test_chat_template_kwargs_cannot_override_call_arguments(chat: pb_grpc.ChatServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        chat.CreateChatCompletion(request(chat_template_kwargs={"tokenize": True}), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json.loads(dict(info.value.trailing_metadata())["x-chatgen-error"])["error"]["param"] == (
        "chat_template_kwargs.tokenize"
    )


def test_model_declares_reasoning_and_hybrid_thinking(thinking_service: Service) -> None:
    model = httpx.get(f"{thinking_service.http_base}/v1/models/{THINKING_MODEL_NAME}", timeout=10).json()
    assert model["model_type"] == "LLM"
    assert model["model_ability"] == ["generate", "chat", "reasoning", "hybrid"]


def test_history_reasoning_reaches_the_template_under_either_name(thinking_service: Service) -> None:
    """An assistant turn's reasoning (reasoning_content or reasoning) is passed to the chat template, which shows
    it again in the turn's think block: the prompt grows by its tokens (5: " the user asks about France")."""
    url = f"{thinking_service.http_base}/v1/chat/completions"

    def prompt_tokens(assistant: dict[str, str]) -> int:
        history = [
            *MESSAGES,
            {"role": "assistant", "content": ANSWER, **assistant},
            {"role": "user", "content": "Why?"},
        ]
        body = {"model": THINKING_MODEL_NAME, "messages": history, "max_tokens": 1}
        reply = httpx.post(url, json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        return int(reply.json()["usage"]["prompt_tokens"])

    bare = prompt_tokens({})
    shown = prompt_tokens({"reasoning_content": REASONING})
    assert shown > bare + 5
    assert prompt_tokens({"reasoning": REASONING}) == shown
    assert prompt_tokens({"reasoning": REASONING, "reasoning_content": REASONING}) == shown
    differ = httpx.post(
        url,
        json={
            "model": THINKING_MODEL_NAME,
            "messages": [*MESSAGES, {"role": "assistant", "content": "x", "reasoning": "a", "reasoning_content": "b"}],
        },
        timeout=30,
    )
    assert differ.status_code == 400 and differ.json()["error"]["param"] == f"messages[{len(MESSAGES)}].reasoning"
    on_user = httpx.post(
        url,
        json={"model": THINKING_MODEL_NAME, "messages": [{"role": "user", "content": "x", "reasoning": "a"}]},
        timeout=30,
    )
    assert on_user.status_code == 400 and on_user.json()["error"]["param"] == "messages[0].reasoning"
