"""Sampling and output controls over REST (openai SDK / raw JSON) and gRPC, on both engines."""

from __future__ import annotations

import re
from collections import defaultdict

import grpc
import httpx
import openai
import pytest
from google.protobuf import json_format

from chatgen.v1 import chatgen_pb2 as pb
from chatgen.v1 import chatgen_pb2_grpc as pb_grpc
from tests.conftest import MODEL_NAME, Service

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PARIS = 7042  # " Paris" in SmolLM2's vocabulary
PERIOD = 30  # "."


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return service.openai()


def post(service: Service, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{service.http_base}{path}", json={"model": MODEL_NAME, **body}, timeout=120)


def test_n_choices_unary(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, n=3, max_tokens=5, temperature=1.0, seed=7,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 15
    # At temperature 1 each choice samples with its own seed (7, 8, 9): not n copies of one sample.
    assert len({c.message.content for c in reply.choices}) > 1, [c.message.content for c in reply.choices]
    # Seeded choices are reproducible as a set.
    again = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, n=3, max_tokens=5, temperature=1.0, seed=7,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_n_choices_streamed_interleaved(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, n=2, max_tokens=6, temperature=0, stream=True,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    text: dict[int, str] = defaultdict(str)
    finishes: dict[int, list[str]] = defaultdict(list)
    roles: dict[int, list[str]] = defaultdict(list)
    for chunk in stream:
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
            if c.delta.role:
                roles[c.index].append(c.delta.role)
            if c.finish_reason:
                finishes[c.index].append(c.finish_reason)
    assert set(text) == {0, 1}
    assert roles == {0: ["assistant"], 1: ["assistant"]}
    assert finishes == {0: ["length"], 1: ["length"]}
    assert text[0] == text[1]  # temperature 0: both choices are the greedy answer


def test_same_seed_same_text_and_other_seeds_other_texts(client: openai.OpenAI) -> None:
    """Fails on a server that ignores `seed` (the same seed would give different texts) or `temperature` (greedy
    decoding would give every seed the same text)."""

    def sample(seed: int) -> str:
        reply = client.completions.create(
            model=MODEL_NAME, prompt="My favourite food is", max_tokens=12, seed=seed, temperature=1.0
        )
        return reply.choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(99), sample(7)}) > 1


def test_logit_bias_forces_a_token(service: Service) -> None:
    reply = post(service, "/v1/completions", {"prompt": "Hello", "max_tokens": 3, "temperature": 0,
                                             "logit_bias": {str(PARIS): 100}}).json()  # fmt: skip
    assert reply["choices"][0]["text"] == " Paris Paris Paris"


def test_stop_token_ids(service: Service) -> None:
    reply = post(service, "/v1/chat/completions", {"messages": QUESTION, "temperature": 0,
                                                  "stop_token_ids": [PERIOD]}).json()  # fmt: skip
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].rstrip(".") == "The capital of France is Paris"
    # Generation ended at the period: no EOS token after it.
    assert reply["usage"]["completion_tokens"] == 7


def test_min_tokens_holds_back_eos(service: Service, tokenizer) -> None:  # type: ignore[no-untyped-def]
    # EOS made the most likely token: without min_tokens it ends the choice at once.
    body = {"prompt": "Hi", "max_tokens": 10, "temperature": 0, "logit_bias": {str(tokenizer.eos_token_id): 100}}
    free = post(service, "/v1/completions", body).json()
    assert free["usage"]["completion_tokens"] == 1 and free["choices"][0]["finish_reason"] == "stop"
    held = post(service, "/v1/completions", {**body, "min_tokens": 4}).json()
    assert held["usage"]["completion_tokens"] == 5 and held["choices"][0]["finish_reason"] == "stop"
    request = json_format.ParseDict({"model": MODEL_NAME, **body, "min_tokens": 6}, pb.CreateCompletionRequest())
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=120)
    assert reply.usage.completion_tokens == 7


def test_allowed_token_ids_are_the_only_tokens_sampled(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    allowed = tokenizer.encode(" yes no maybe")
    assert len(allowed) == 3  # one token per word
    reply = client.completions.create(
        model=MODEL_NAME, prompt="Answer:", max_tokens=8, temperature=1.0, seed=7,
        extra_body={"allowed_token_ids": allowed, "ignore_eos": True},
    )  # fmt: skip
    assert re.fullmatch("(?: yes| no| maybe){8}", reply.choices[0].text), reply.choices[0].text


def test_cache_salt_is_accepted_and_changes_no_output(client: openai.OpenAI, service: Service) -> None:
    def greedy(**extra: object) -> str:
        reply = client.chat.completions.create(
            model=MODEL_NAME,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            extra_body=extra,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content or ""

    assert greedy(cache_salt="tenant-a") == greedy(cache_salt="tenant-b") == greedy()
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "cache_salt": "tenant-a"},
        pb.CreateChatCompletionRequest(),
    )
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = pb_grpc.ChatServiceStub(channel).CreateChatCompletion(request, timeout=120)
    assert reply.choices[0].message.content == greedy()


def test_vocabulary_errors_name_the_key_and_the_vocabulary_size(service: Service) -> None:
    error = post(service, "/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 1}}).json()["error"]
    assert error["param"] == "logit_bias.99999999"
    assert "'99999999'" in error["message"] and "this model has 49152 tokens" in error["message"]


def test_echo_and_request_id(service: Service) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "echo": True}
    reply = post(service, "/v1/completions", {**body, "request_id": "abc123"}).json()
    assert reply["id"] == "cmpl-abc123"
    assert reply["choices"][0]["text"].startswith("The capital of France is Paris")
    chat = post(service, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 2, "request_id": "q-9"}).json()
    assert chat["id"] == "chatcmpl-q-9"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": QUESTION, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": QUESTION, "n": 99}, "n"),
        ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": QUESTION, "logit_bias": {"abc": 1}}, "logit_bias.abc"),
        ("/v1/chat/completions", {"messages": QUESTION, "logit_bias": {"5": 500}}, "logit_bias.5"),
        ("/v1/chat/completions", {"messages": QUESTION, "logit_bias": {"99999999": 1}}, "logit_bias.99999999"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids[0]"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [7, 99999999]}, "stop_token_ids[1]"),
        ("/v1/completions", {"prompt": "x", "allowed_token_ids": [99999999]}, "allowed_token_ids[0]"),
        ("/v1/completions", {"prompt": "x", "allowed_token_ids": [-3]}, "allowed_token_ids[0]"),
        ("/v1/completions", {"prompt": "x", "min_tokens": -1}, "min_tokens"),
        ("/v1/completions", {"prompt": "x", "min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ("/v1/chat/completions", {"messages": QUESTION, "cache_salt": ""}, "cache_salt"),
        ("/v1/chat/completions", {"messages": QUESTION, "cache_salt": "a/b"}, "cache_salt"),
        ("/v1/chat/completions", {"messages": QUESTION, "cache_salt": "x" * 129}, "cache_salt"),
    ],
)
def test_bad_sampling_values(service: Service, path: str, body: dict[str, object], param: str) -> None:
    response = post(service, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        temperature=0,
        logprobs=True,
        top_logprobs=2,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    # The EOS token is scored too (as vLLM's server does), though it is not part of the text.
    assert "".join(e.token for e in entries) == (choice.message.content or "") + "<|im_end|>"
    for e in entries[:-1]:
        assert e.logprob <= 0.0
        assert len(e.top_logprobs) == 2
        assert e.top_logprobs[0].token == e.token  # greedy: the chosen token is the most likely
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.bytes == list(e.token.encode())
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        temperature=0,
        logprobs=True,
        stream=True,  # type: ignore[arg-type]
    )
    streamed = [lp.token for chunk in stream for c in chunk.choices if c.logprobs for lp in c.logprobs.content or []]
    assert streamed == [e.token for e in entries]


def test_completion_logprobs_legacy_shape(service: Service) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    response = post(service, "/v1/completions", body)
    choice = response.json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 4
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert all(1 <= len(top) <= 2 for top in lp["top_logprobs"])
    assert all(lp["tokens"][i] in lp["top_logprobs"][i] for i in range(4))


def test_grpc_n_and_logprobs_fields(service: Service) -> None:
    request = json_format.ParseDict(
        {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, "n": 2, "temperature": 0, "ignore_eos": True},
        pb.CreateCompletionRequest(),
    )
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = pb_grpc.GenerateServiceStub(channel).CreateCompletion(request, timeout=60)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 4
    assert not reply.choices[0].HasField("logprobs")


def test_echo_with_logprobs_scores_the_prompt_too(service: Service) -> None:
    prompt = "The capital of France is"
    body = {"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1}
    reply = post(service, "/v1/completions", body).json()
    choice, usage = reply["choices"][0], reply["usage"]
    lp = choice["logprobs"]
    assert choice["text"].startswith(prompt)
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["tokens"]) == usage["prompt_tokens"] + usage["completion_tokens"]
    # Nothing precedes the first prompt token, so it has no logprob (null, as OpenAI and vLLM send it).
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"][usage["prompt_tokens"]] == len(prompt)


def test_echo_with_logprobs_0_lists_the_chosen_token_in_each_entry(service: Service) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 0}
    lp = post(service, "/v1/completions", body).json()["choices"][0]["logprobs"]
    assert lp["top_logprobs"][0] is None
    for token, value, top in list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True))[1:]:
        assert top == {token: value}
    # Sampled: the chosen token is listed beside the 2 most likely, up to 3 entries (OpenAI's logprobs + 1).
    sampled = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.5, "seed": 5, "logprobs": 2}
    lp = post(service, "/v1/completions", sampled).json()["choices"][0]["logprobs"]
    assert all(token in top and 2 <= len(top) <= 3 for token, top in zip(lp["tokens"], lp["top_logprobs"], strict=True))


@pytest.mark.parametrize(("skip", "expected"), [(True, ""), (False, "<|im_start|><|im_start|>")])
def test_skip_special_tokens(service: Service, skip: bool, expected: str) -> None:
    # logit_bias forces <|im_start|> (id 1), a special token that is not an end-of-sequence token.
    body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0, "logit_bias": {"1": 100}, "skip_special_tokens": skip}
    reply = post(service, "/v1/completions", body).json()
    assert reply["choices"][0]["text"] == expected
    assert reply["usage"]["completion_tokens"] == 2
