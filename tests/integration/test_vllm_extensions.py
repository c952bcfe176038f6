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


PARTIAL = [*ASK, {"role": "assistant", "content": "The capital of France is"}]


def post(service: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{service.http_base}{path}", json={"model": MODEL_NAME, **body}, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def test_continue_final_message_with_echo_finishes_the_assistants_message(
    client: openai.OpenAI, service: Service
) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=PARTIAL, max_tokens=6, temperature=0,  # type: ignore[arg-type]
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "echo": True},
    )  # fmt: skip
    content = reply.choices[0].message.content or ""
    # The same prompt run as a completion of its token ids continues it the same way (greedy).
    ids = post(service, "/tokenize", {"messages": PARTIAL, "continue_final_message": True})["tokens"]
    assert reply.usage is not None and reply.usage.prompt_tokens == len(ids)
    continuation = post(service, "/v1/completions", {"prompt": ids, "max_tokens": 6, "temperature": 0})
    assert content == "The capital of France is" + continuation["choices"][0]["text"]
    # Without echo, only the continuation; streamed with echo, the partial message leads the first delta.
    bare = client.chat.completions.create(
        model=MODEL_NAME, messages=PARTIAL, max_tokens=6, temperature=0,  # type: ignore[arg-type]
        extra_body={"continue_final_message": True},
    )  # fmt: skip
    assert bare.choices[0].message.content == continuation["choices"][0]["text"]
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=PARTIAL, max_tokens=6, temperature=0, stream=True,  # type: ignore[arg-type]
        extra_body={"continue_final_message": True, "echo": True},
    )  # fmt: skip
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert deltas[0].startswith("The capital of France is") and "".join(deltas) == content


def test_add_generation_prompt_false_renders_without_it(service: Service) -> None:
    counted = post(service, "/tokenize", {"messages": ASK, "add_generation_prompt": False})["count"]
    reply = post(service, "/v1/chat/completions", {"messages": ASK, "max_tokens": 1, "add_generation_prompt": False})
    assert reply["usage"]["prompt_tokens"] == counted
    assert counted < post(service, "/tokenize", {"messages": ASK})["count"]


@pytest.mark.parametrize(
    "extra",
    [
        {"continue_final_message": True},  # the last message is the user's
        {"continue_final_message": True, "add_generation_prompt": True, "messages": PARTIAL},
    ],
)
def test_template_options_that_contradict_are_400(service: Service, extra: dict[str, Any]) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, **extra}
    reply = httpx.post(f"{service.http_base}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "continue_final_message", reply.text


def test_continue_final_message_over_grpc(channel: grpc.Channel) -> None:
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "messages": PARTIAL, "max_tokens": 4, "temperature": 0, "continue_final_message": True,
         "echo": True},
        pb.CreateChatCompletionRequest(),
    )  # fmt: skip
    reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(request, timeout=120)
    assert reply.choices[0].message.content.startswith("The capital of France is")
    assert len(reply.choices[0].message.content) > len("The capital of France is")


def test_truncate_prompt_tokens_cuts_the_prompt(service: Service, tokenizer: Any) -> None:
    limit = httpx.get(f"{service.http_base}/v1/models").json()["data"][0]["max_model_len"]
    long_prompt = "one two three four " * (limit // 2)
    ids = tokenizer.encode(long_prompt)
    assert len(ids) > limit
    # Over the context it is an error; cut, it runs, keeping the side asked for.
    body = {"prompt": long_prompt, "max_tokens": 2, "temperature": 0}
    refused = httpx.post(f"{service.http_base}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    left = post(service, "/v1/completions", {**body, "truncate_prompt_tokens": 6, "truncation_side": "left",
                                             "echo": True, "return_token_ids": True})  # fmt: skip
    choice = left["choices"][0]
    assert left["usage"]["prompt_tokens"] == 6 and choice["prompt_token_ids"] == ids[-6:]
    assert choice["text"].startswith(tokenizer.decode(ids[-6:]))
    right = post(service, "/v1/completions", {**body, "truncate_prompt_tokens": 6, "truncation_side": "right",
                                              "return_token_ids": True})  # fmt: skip
    assert right["choices"][0]["prompt_token_ids"] == ids[:6]
    # -1: as much as the context holds beside max_tokens.
    whole = post(service, "/v1/completions", {**body, "truncate_prompt_tokens": -1})
    assert whole["usage"]["prompt_tokens"] == limit - 2
    chat = post(service, "/v1/chat/completions", {"messages": ASK, "max_tokens": 2, "truncate_prompt_tokens": 4})
    assert chat["usage"]["prompt_tokens"] == 4
    too_many = httpx.post(
        f"{service.http_base}/v1/completions",
        json={"model": MODEL_NAME, **body, "truncate_prompt_tokens": limit},
        timeout=60,
    )
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "truncate_prompt_tokens"


def test_continuous_usage_stats_put_the_usage_so_far_in_every_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=5, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
    )  # fmt: skip
    chunks = list(stream)
    counted = [c.usage.completion_tokens for c in chunks[1:] if c.choices and c.usage is not None]
    assert len(counted) >= 2 and counted == sorted(counted) and counted[-1] == 5
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices
    assert all(c.usage.prompt_tokens == chunks[-1].usage.prompt_tokens for c in chunks[1:] if c.usage is not None)
    # Without include_usage it changes nothing, as vLLM.
    plain = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, stream=True,
        stream_options={"continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
    )  # fmt: skip
    assert all(c.usage is None for c in plain)


def test_prompt_logprobs_score_each_prompt_token(service: Service, tokenizer: Any) -> None:
    reply = post(service, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 2})
    steps = reply["choices"][0]["prompt_logprobs"]
    ids = tokenizer.encode(PROMPT)
    assert len(steps) == len(ids) and steps[0] is None
    for token_id, step in zip(ids[1:], steps[1:], strict=True):
        chosen = step[str(token_id)]
        assert chosen["decoded_token"] == tokenizer.decode([token_id])
        assert isinstance(chosen["rank"], int) and chosen["rank"] >= 1 and chosen["logprob"] <= 0
        ranked = sorted(e["rank"] for key, e in step.items() if key != str(token_id) or e["rank"] <= 2)
        assert ranked[:2] == [1, 2] and 2 <= len(step) <= 3
    # Chat: on the reply, over the prompt as the template rendered it.
    chat = post(service, "/v1/chat/completions", {"messages": ASK, "max_tokens": 1, "prompt_logprobs": 0})
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"] and chat["prompt_logprobs"][0] is None
    assert all(len(step) == 1 for step in chat["prompt_logprobs"][1:])
    plain = post(service, "/v1/chat/completions", {"messages": ASK, "max_tokens": 1})
    assert "prompt_logprobs" not in plain
    # gRPC: the same entries, as JSON values.
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 2}, pb.CreateCompletionRequest()
    )
    with grpc.insecure_channel(service.grpc_address) as channel:
        over_grpc = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=120)
    entries = json_format.MessageToDict(over_grpc.choices[0].prompt_logprobs)
    assert entries[0] is None and set(entries[1]) == set(steps[1])


@pytest.mark.parametrize(
    ("body", "param"),
    [({"prompt_logprobs": 21}, "prompt_logprobs"), ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs")],
)
def test_bad_prompt_logprobs_are_400(service: Service, body: dict[str, Any], param: str) -> None:
    reply = httpx.post(
        f"{service.http_base}/v1/completions", json={"model": MODEL_NAME, "prompt": "x", **body}, timeout=60
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_return_tokens_as_token_ids_names_logprob_tokens_by_id(client: openai.OpenAI, channel: grpc.Channel) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,  # type: ignore[arg-type]
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    entries = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    ids = (reply.choices[0].model_extra or {})["token_ids"]
    assert [e.token for e in entries] == [f"token_id:{i}" for i in ids]
    assert all(t.token.startswith("token_id:") for e in entries for t in e.top_logprobs)
    assert entries[0].bytes == list(entries[0].token.encode())
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1, echo=True,
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    extra = completion.choices[0].model_extra or {}
    tokens = completion.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert tokens == [f"token_id:{i}" for i in extra["prompt_token_ids"] + extra["token_ids"]]


NAMED = [100, 1000, 5000]


def test_logprob_token_ids_score_the_named_tokens_at_each_step(client: openai.OpenAI, channel: grpc.Channel) -> None:
    natural = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=3, temperature=0, logprobs=True, top_logprobs=1,  # type: ignore[arg-type]
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    chosen = (natural.choices[0].model_extra or {})["token_ids"]
    named = [*NAMED, chosen[0]]
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, max_tokens=3, temperature=0, logprobs=True,  # type: ignore[arg-type]
        extra_body={"logprob_token_ids": named, "return_tokens_as_token_ids": True},
    )  # fmt: skip
    entries = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [e.token for e in entries] == [f"token_id:{i}" for i in chosen]
    for entry in entries:
        # The named tokens, in the order named, instead of the most likely ones.
        assert [t.token for t in entry.top_logprobs] == [f"token_id:{i}" for i in named]
        assert all(-100 < t.logprob < 0 for t in entry.top_logprobs)
    # The first step's chosen token is named last: its logprob there is the chosen token's own.
    first = entries[0]
    assert abs(first.top_logprobs[-1].logprob - first.logprob) < 1e-4
    assert first.top_logprobs[0].logprob < first.logprob
    # Completions and gRPC: the same tokens scored.
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=len(NAMED),
        extra_body={"logprob_token_ids": NAMED, "return_tokens_as_token_ids": True},
    )  # fmt: skip
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    tops = logprobs.top_logprobs
    # As vLLM's completions: the chosen token is among each step's top_logprobs too.
    assert [set(step) for step in tops] == [{f"token_id:{i}" for i in NAMED} | {t} for t in logprobs.tokens]
    request = pb.CreateCompletionRequest(model=MODEL_NAME, max_tokens=2, temperature=0, logprobs=0)
    request.prompt.string_value = PROMPT
    request.logprob_token_ids.extend(NAMED)
    over_grpc = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=120)
    grpc_tops = json_format.MessageToDict(over_grpc.choices[0].logprobs, preserving_proto_field_name=True)[
        "top_logprobs"
    ]
    assert [sorted(step.values()) for step in grpc_tops] == [sorted(step.values()) for step in tops]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprob_token_ids": NAMED}, "logprob_token_ids"),  # no logprobs
        ({"logprob_token_ids": NAMED, "logprobs": True, "top_logprobs": 2}, "top_logprobs"),
        ({"logprob_token_ids": [1, 1], "logprobs": True}, "logprob_token_ids"),
        ({"logprob_token_ids": [1, 10**8], "logprobs": True}, "logprob_token_ids[1]"),
        ({"logprob_token_ids": [-1], "logprobs": True}, "logprob_token_ids[0]"),
        ({"logprob_token_ids": list(range(129)), "logprobs": True}, "logprob_token_ids"),
        ({"logprob_token_ids": ["a"], "logprobs": True}, "logprob_token_ids[0]"),
    ],
)
def test_bad_logprob_token_ids_are_400(service: Service, extra: dict[str, Any], param: str) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, "max_tokens": 2, **extra}
    reply = httpx.post(f"{service.http_base}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
