"""Xinference's own Python client against chatgen's REST API, as the Xinference docs use it."""

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
    with pytest.raises(RuntimeError):
        RESTfulClient(service.http_base).get_model("no-such-model")


def test_xinference_client_thinking_switch(thinking_service: Service) -> None:
    model = RESTfulClient(thinking_service.http_base).get_model(THINKING_MODEL_NAME)
    on = model.chat(MESSAGES[1:], generate_config={"temperature": 0})
    assert on["choices"][0]["message"] == {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}
    off = model.chat(MESSAGES[1:], enable_thinking=False, generate_config={"temperature": 0})
    assert off["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
    via_kwargs = model.chat(
        MESSAGES[1:], generate_config={"temperature": 0, "chat_template_kwargs": {"enable_thinking": False}}
    )
    assert via_kwargs["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
