"""Third-party clients against chatgen's REST API: Xinference's RESTfulClient (as the Xinference docs use it),
LangChain's ChatOpenAI and LlamaIndex's OpenAILike (as Xinference's FAQ points users to them)."""

from __future__ import annotations

import pytest
from xinference_client import RESTfulClient

from tests.conftest import MODEL_NAME, Service
from tests.support.models import ANSWER, REASONING, THINKING_MODEL_NAME

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_xinference_client_chat_and_generate(service: Service) -> None:
    model = RESTfulClient(service.http_base).get_model(MODEL_NAME)
    reply = model.chat(MESSAGES, generate_config={"max_tokens": 32, "temperature": 0})
    assert reply["object"] == "chat.completion"
    assert "Paris" in reply["choices"][0]["message"]["content"]
    chunks = list(model.chat(MESSAGES, generate_config={"max_tokens": 32, "temperature": 0, "stream": True}))
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == (reply["choices"][0]["message"]["content"])
    )
    text = model.generate("The capital of France is", generate_config={"max_tokens": 8, "temperature": 0})
    assert text["object"] == "text_completion"
    assert "Paris" in text["choices"][0]["text"]
    streamed = list(model.generate("The capital of France is", generate_config={"max_tokens": 8, "stream": True}))
    assert len(streamed) >= 2


def test_xinference_client_unknown_model_raises(service: Service) -> None:
    with pytest.raises(RuntimeError) as info:
        RESTfulClient(service.http_base).get_model("no-such-model")
    # The client reports the HTTP status it got (our body has no Xinference `detail`): a 404, not any failure.
    assert "404 Client Error" in str(info.value) and "/v1/models/no-such-model" in str(info.value)


def test_xinference_client_thinking_switch(thinking_service: Service) -> None:
    model = RESTfulClient(thinking_service.http_base).get_model(THINKING_MODEL_NAME)
    on = model.chat(MESSAGES[1:], generate_config={"temperature": 0})
    # "tool_calls": [] in every message, as vLLM's server sends it.
    assert on["choices"][0]["message"] == {
        "role": "assistant",
        "content": ANSWER,
        "reasoning_content": REASONING,
        "reasoning": REASONING,
        "tool_calls": [],
    }
    off = model.chat(MESSAGES[1:], enable_thinking=False, generate_config={"temperature": 0})
    assert off["choices"][0]["message"] == {"role": "assistant", "content": ANSWER, "tool_calls": []}
    via_kwargs = model.chat(
        MESSAGES[1:], generate_config={"temperature": 0, "chat_template_kwargs": {"enable_thinking": False}}
    )
    assert via_kwargs["choices"][0]["message"] == {"role": "assistant", "content": ANSWER, "tool_calls": []}


def test_langchain_chat_openai(service: Service) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL_NAME, base_url=f"{service.http_base}/v1", api_key="unused", temperature=0)
    answer = llm.invoke("What is the capital of France?")
    assert "Paris" in str(answer.content)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is the capital of France?"))
    assert streamed == answer.content


def test_llamaindex_openai_like(service: Service) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    chat_llm = OpenAILike(
        model=MODEL_NAME, api_base=f"{service.http_base}/v1", api_key="unused", is_chat_model=True, temperature=0
    )
    reply = chat_llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
    assert "Paris" in (reply.message.content or "")
    text_llm = OpenAILike(
        model=MODEL_NAME, api_base=f"{service.http_base}/v1", api_key="unused", temperature=0, max_tokens=8
    )
    completion = text_llm.complete("The capital of France is")
    assert "Paris" in completion.text
    assert "".join(r.delta or "" for r in text_llm.stream_complete("The capital of France is")) == completion.text
