"""The OpenAI-compatible REST API through the real Envoy, with the real `openai` SDK and raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return service.openai()


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.http_base, timeout=120) as c:
        yield c


def sse_events(body: str) -> list[str]:
    """Split an SSE body into its `data:` payloads, checking the framing on the way."""
    assert body.endswith("\n\n"), repr(body[-40:])
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), repr(block)
        assert "\n" not in block
        events.append(block[len("data: ") :])
    return events


def test_openai_sdk_chat_unary(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0)  # type: ignore[arg-type]
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert isinstance(reply.created, int)
    assert reply.model == MODEL_NAME
    assert reply.choices[0].message.role == "assistant"
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0


def test_openai_sdk_chat_stream_equals_unary(client: openai.OpenAI) -> None:
    unary = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=30)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [unary.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and unary.usage is not None
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


def test_openai_sdk_completions_unary_and_stream(client: openai.OpenAI) -> None:
    unary = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert unary.object == "text_completion"
    assert "Paris" in unary.choices[0].text
    assert unary.choices[0].finish_reason == "length"
    assert unary.usage is not None and unary.usage.completion_tokens == 8
    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == unary.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


PROMPTS = ["The capital of France is", "Two plus two is"]


def test_openai_sdk_completions_batch(client: openai.OpenAI) -> None:
    """A list of prompts is a batch: n choices per prompt, choice k answering prompt k // n (as OpenAI and vLLM)."""
    single = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=6, temperature=0) for p in PROMPTS]
    batch = client.completions.create(model=MODEL_NAME, prompt=PROMPTS, n=2, max_tokens=6, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [single[k // 2].choices[0].text for k in range(4)]
    assert batch.usage is not None and all(s.usage for s in single)
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)  # type: ignore[union-attr]
    assert batch.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in single)  # type: ignore[union-attr]
    stream = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPTS,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finished, usage = ["", ""], set(), None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert texts == [s.choices[0].text for s in single] and finished == {0, 1}
    assert usage is not None and usage.prompt_tokens == batch.usage.prompt_tokens


def test_openai_sdk_completions_token_id_prompts(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = [list(tokenizer.encode(p)) for p in PROMPTS]
    by_text = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    one = client.completions.create(model=MODEL_NAME, prompt=ids[0], max_tokens=6, temperature=0)
    assert one.choices[0].text == by_text.choices[0].text
    assert one.usage is not None and by_text.usage is not None and one.usage.prompt_tokens == len(ids[0])
    assert one.usage.prompt_tokens == by_text.usage.prompt_tokens
    both = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert [c.text[: len(p)] for c, p in zip(both.choices, PROMPTS, strict=True)] == PROMPTS
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_NAME, prompt=[ids[0], [len(tokenizer) + 5]], max_tokens=2)
    assert err.value.body["param"] == "prompt[1][0]" and "vocabulary" in err.value.message  # type: ignore[index]


def test_openai_sdk_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].object == "model"
    assert isinstance(models.data[0].created, int)
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_raw_sse_framing(http: httpx.Client) -> None:
    body = {"model": MODEL_NAME, "messages": QUESTION, "stream": True, "temperature": 0, "max_tokens": 20}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "grpc-status" not in response.headers
        raw = response.read().decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert isinstance(c["created"], int)  # not the transcoder's int64-as-string
        assert set(c) == {"id", "object", "created", "model", "choices"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("finish_reason" not in c["choices"][0] for c in chunks[:-1])


def test_raw_unary_json_shape(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert isinstance(data["created"], int)
    assert data["usage"]["completion_tokens"] == 3


def test_curl_style_form_content_type_is_415_saying_what_to_send(http: httpx.Client) -> None:
    # `curl -d` without -H labels a JSON body application/x-www-form-urlencoded: refused (as vLLM's server does),
    # with the header to add.
    body = json.dumps({"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 3, "stream": True})
    response = http.post("/v1/completions", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_openai_error(client: openai.OpenAI, http: httpx.Client, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, stream=stream)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    body = {"model": "no-such-model", "messages": QUESTION, "stream": stream}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error"
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_NAME, "messages": []}, "messages"),
        ({"model": MODEL_NAME}, "messages"),
        ({"model": MODEL_NAME, "messages": QUESTION, "top_p": 0}, "top_p"),
        ({"model": MODEL_NAME, "messages": QUESTION, "stream": True, "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL_NAME, "prompt": []}, "prompt"),
        ({"model": MODEL_NAME, "prompt": ["a", ""]}, "prompt[1]"),
        ({"model": MODEL_NAME, "prompt": ["a", [1, 2]]}, "prompt"),
        ({"model": MODEL_NAME, "prompt": [1, -2]}, "prompt[1]"),
    ],
)
def test_bad_request_is_400_openai_error(http: httpx.Client, body: dict, param: str) -> None:  # type: ignore[type-arg]
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    response = http.post(path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ("{not json", None),
        ('{"model": "x", "messages": "not-a-list"}', "messages"),
        ('{"model": "x", "temperature": "hot"}', "temperature"),
        ('{"model": "x", "messages": [{"role": "user", "tool_calls": [{"function": {"name": 5}}]}]}',
         "messages[0].tool_calls[0].function.name"),
    ],
)  # fmt: skip
def test_malformed_json_is_openai_error_naming_the_field(http: httpx.Client, content: str, param: str | None) -> None:
    response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    assert error["message"]
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_wrong_json_types_are_answered_by_the_gateway_before_the_server(service: Service, http: httpx.Client) -> None:
    """What proto3's JSON parsing would take ("3" for 3, "yes" for true, an object for a one-element array) is a
    400 from the gateway's Lua check: the server never sees the call (it logs every call it gets)."""
    ask = [{"role": "user", "content": "Hi"}]
    for i, (body, param) in enumerate([
        ({"model": MODEL_NAME, "messages": {"role": "user", "content": "Hi"}}, "messages"),
        ({"model": MODEL_NAME, "messages": ask, "max_tokens": "3"}, "max_tokens"),
        ({"model": MODEL_NAME, "messages": ask, "stream": "yes"}, "stream"),
        ({"model": MODEL_NAME, "messages": ask, "guided_json": {"type": "object"}}, "guided_json"),
    ]):  # fmt: skip
        response = http.post("/v1/chat/completions", json=body, headers={"x-request-id": f"edge-typed-{i}"})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    served = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": ask, "max_tokens": 1},
                       headers={"x-request-id": "edge-typed-served"})  # fmt: skip
    assert served.status_code == 200
    # The served call's line is written when it ends, after any line of the refused ones would have been.
    deadline = time.monotonic() + 10
    while not any("edge-typed-served" in line for line in list(service.log)) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = list(service.log)
    assert any("edge-typed-served" in line for line in lines)
    assert not any("edge-typed-" in line and "edge-typed-served" not in line for line in lines)


def test_unknown_path_is_404_openai_error(http: httpx.Client) -> None:
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_openai_sdk_bad_request_then_still_serving(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    assert info.value.status_code == 400
    reply = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (reply.choices[0].message.content or "")
