"""The chat layer's entry point (ChatApi) on the transformers fallback engine and the real embedded model (no
server): results, streams, aborts, the checks that need the model, and rendering off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat import accounting, api
from chatgen.chat.api import ChatApi
from chatgen.chat.types import Delta, StreamStart, Usage
from chatgen.chat.validation import ServedModel
from chatgen.engine.hf_engine import HfEngine, _IncrementalDecoder
from chatgen.errors import ApiError, Failure
from chatgen.v1 import chatgen_pb2 as pb
from tests.unit.conftest import HF_NAME

NAME = HF_NAME
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(**fields: Any) -> pb.CreateChatCompletionRequest:
    return json_format.ParseDict({"model": NAME, "messages": QUESTION, **fields}, pb.CreateChatCompletionRequest())


def completion(prompt: str, **fields: Any) -> pb.CreateCompletionRequest:
    return json_format.ParseDict({"model": NAME, "prompt": prompt, **fields}, pb.CreateCompletionRequest())


@pytest.fixture(scope="module")
def engine(hf_engine: HfEngine) -> HfEngine:
    return hf_engine


@pytest.fixture(scope="module")
def chat_api(engine: HfEngine) -> ChatApi:
    return ChatApi(engine, ServedModel(NAME, engine.name))


async def test_chat_answers_paris_with_usage(chat_api: ChatApi, tokenizer) -> None:  # type: ignore[no-untyped-def]
    result = await chat_api.chat(chat(temperature=0.0, max_tokens=30))
    assert result.id.startswith("chatcmpl-")
    assert result.choices[0].text == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"
    rendered = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert result.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert result.usage.completion_tokens == len(tokenizer.encode(result.choices[0].text, add_special_tokens=False)) + 1


async def test_stream_opens_with_its_start_and_joins_to_the_unary_text(chat_api: ChatApi) -> None:
    unary = await chat_api.chat(chat(temperature=0.0, max_tokens=30))
    items = [i async for i in chat_api.chat_stream(chat(temperature=0.0, max_tokens=30))]
    start, deltas = items[0], items[1:]
    assert isinstance(start, StreamStart) and start.n == 1 and not start.logprobs
    assert start.id.startswith("chatcmpl-") and start.id != unary.id
    assert all(isinstance(d, Delta) for d in deltas) and len(deltas) > 3
    assert "".join(d.text for d in deltas) == unary.choices[0].text  # type: ignore[union-attr]
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]  # type: ignore[union-attr]


async def test_stream_ends_with_usage_only_when_asked(chat_api: ChatApi) -> None:
    asked = [
        i
        async for i in chat_api.complete_stream(completion("Hi", max_tokens=3, stream_options={"include_usage": True}))
    ]
    assert asked[-1] == Usage(prompt_tokens=1, completion_tokens=3)
    plain = [i async for i in chat_api.complete_stream(completion("Hi", max_tokens=3))]
    assert not any(isinstance(i, Usage) for i in plain)


async def test_max_tokens_and_stop(chat_api: ChatApi) -> None:
    long = await chat_api.complete(completion("Once upon a time", max_tokens=6))
    assert long.choices[0].finish_reason == "length"
    assert long.usage.completion_tokens == 6
    stopped = await chat_api.chat(chat(temperature=0.0, max_tokens=30, stop="Paris"))
    assert stopped.choices[0].text == "The capital of France is "
    assert stopped.choices[0].finish_reason == "stop"


async def test_same_seed_same_text_and_another_seed_another(chat_api: ChatApi) -> None:
    texts = [
        (await chat_api.complete(completion("My favourite food is", temperature=1.0, max_tokens=12, seed=s)))
        .choices[0]
        .text
        for s in (42, 42, 7)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


async def test_abort_frees_the_engine_and_concurrency_works(chat_api: ChatApi, engine: HfEngine) -> None:
    stream = chat_api.complete_stream(completion("Count:", max_tokens=400, ignore_eos=True))
    assert isinstance(await anext(stream), StreamStart)
    first = await anext(stream)
    assert isinstance(first, Delta) and first.text
    assert engine.num_running() == 1
    results = await asyncio.gather(
        *(chat_api.complete(completion("Hi", max_tokens=4, ignore_eos=True)) for _ in range(2))
    )
    assert [r.usage.completion_tokens for r in results] == [4, 4]
    await stream.aclose()  # what a cancelled gRPC call does
    assert engine.num_running() == 0


@pytest.mark.parametrize(
    ("request_", "failure", "param"),
    [
        (chat(max_tokens=600), Failure.CONTEXT_LENGTH_EXCEEDED, "max_tokens"),
        (chat(messages=[{"role": "user", "content": "word " * 600}]), Failure.CONTEXT_LENGTH_EXCEEDED, "messages"),
        (chat(logit_bias={"49152": 1}), Failure.INVALID_REQUEST, "logit_bias.49152"),
        (chat(stop_token_ids=[49152]), Failure.INVALID_REQUEST, "stop_token_ids[0]"),
        (chat(allowed_token_ids=[5, 49152]), Failure.INVALID_REQUEST, "allowed_token_ids[1]"),
    ],
)
async def test_checks_that_need_the_model(
    chat_api: ChatApi, request_: pb.CreateChatCompletionRequest, failure: Failure, param: str
) -> None:
    with pytest.raises(ApiError) as info:
        await chat_api.chat(request_)
    assert info.value.failure is failure
    assert info.value.param == param
    if failure is Failure.INVALID_REQUEST:
        assert "this model has 49152 tokens" in info.value.message


async def test_stats_are_filled_in_for_the_bound_call(chat_api: ChatApi) -> None:
    stats = accounting.RequestStats()

    async def call() -> None:
        accounting.bind(stats)
        await chat_api.chat(chat(max_tokens=3, ignore_eos=True, n=2, request_id="abc"))

    await asyncio.create_task(call())
    assert (stats.model, stats.completion_id, stats.n, stats.completion_tokens) == (NAME, "chatcmpl-abc", 2, 6)
    assert stats.prompt_tokens > 10 and stats.ttft is not None and stats.ttft > 0


def test_incremental_decoder_holds_back_a_split_stop_string(tokenizer) -> None:  # type: ignore[no-untyped-def]
    decoder = _IncrementalDecoder(tokenizer, ("END",))
    ids = tokenizer.encode("hello there EN", add_special_tokens=False)
    text, stopped = decoder.add(ids)
    assert stopped is None
    assert text == "hello there "  # "EN" could be the start of "END"
    text, stopped = decoder.add(tokenizer.encode("D and more", add_special_tokens=False))
    assert stopped == "END"
    assert text == ""


async def test_prompts_are_rendered_off_the_event_loop(chat_api: ChatApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt's template and tokenizer (100 ms for 16k tokens) must not stall the streams the loop serves."""
    threads: list[str] = []

    def spying(render):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return render(*args)

        return run

    monkeypatch.setattr(api, "render_chat", spying(api.render_chat))
    monkeypatch.setattr(api, "render_completion", spying(api.render_completion))
    await chat_api.chat(chat(max_tokens=2))
    await chat_api.complete(completion("Once upon a time", max_tokens=2))
    loop_thread = threading.current_thread().name
    assert len(threads) == 2 and all(t.startswith("chatgen-render") and t != loop_thread for t in threads), threads


async def test_revoke_ends_running_streams_and_unary_calls_with_shutting_down(engine: HfEngine) -> None:
    """The drain's grace period is over: a stream under way and a unary call each end with the error (the
    transport turns it into an error event or UNAVAILABLE) and the engine runs nothing."""
    own = ChatApi(engine, ServedModel(NAME, engine.name))
    stream = own.complete_stream(completion("Count:", max_tokens=400, ignore_eos=True))
    assert isinstance(await anext(stream), StreamStart)
    assert isinstance(await anext(stream), Delta)
    unary = asyncio.ensure_future(own.complete(completion("Count:", max_tokens=400, ignore_eos=True)))
    while engine.num_running() < 2:
        await asyncio.sleep(0.01)

    await own.revoke("The server is shutting down")
    with pytest.raises(ApiError) as info:
        async for _ in stream:
            pass
    assert (info.value.failure, info.value.message) == (Failure.SHUTTING_DOWN, "The server is shutting down")
    with pytest.raises(ApiError) as info:
        await asyncio.wait_for(unary, 10)
    assert info.value.failure is Failure.SHUTTING_DOWN
    assert engine.num_running() == 0
    with pytest.raises(ApiError):  # and nothing starts after it
        await own.complete(completion("Hi", max_tokens=2))


async def test_a_call_cancelled_while_its_prompt_renders_never_reaches_the_engine(
    engine: HfEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller goes away while the renderer thread still works on its prompt: the rendered prompt is dropped
    and no engine request starts (the renderer is then free for the next call)."""
    entered, release = threading.Event(), threading.Event()
    started: list[str] = []

    def slow(render):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(10)
            return render(*args)

        return run

    class Observer:
        def engine_request_started(self) -> None:
            started.append("started")

        def engine_request_aborted(self) -> None:
            started.append("aborted")

        def output_gap(self, seconds: float) -> None:
            pass

    own = ChatApi(engine, ServedModel(NAME, engine.name), observer=Observer())
    monkeypatch.setattr(api, "render_chat", slow(api.render_chat))
    for call in (own.chat(chat(max_tokens=50)), anext(own.chat_stream(chat(max_tokens=50, stream=True)))):
        entered.clear()
        release.clear()
        task = asyncio.ensure_future(call)
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.sleep(0.2)
        assert (started, engine.num_running()) == ([], 0)
    monkeypatch.undo()
    assert (await own.chat(chat(max_tokens=2))).usage.completion_tokens >= 1
    assert started == ["started"]
