"""The chat layer and the transformers fallback engine, on the real embedded model (no server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatgen.chat import generation
from chatgen.chat.generation import Generator
from chatgen.chat.types import ChatRequest, CompletionRequest, Message, Sampling
from chatgen.engine.hf_engine import HfEngine, HfSettings, _IncrementalDecoder
from chatgen.errors import ChatgenError, Failure

NAME = "smol"
QUESTION = [Message("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
async def engine(model_dir: Path) -> AsyncIterator[HfEngine]:
    e = HfEngine(HfSettings(str(model_dir), NAME, max_model_len=512))
    await e.start()
    yield e
    await e.shutdown()


@pytest.fixture(scope="module")
def gen(engine: HfEngine) -> Generator:
    return Generator(engine)


async def test_chat_answers_paris_with_usage(gen: Generator, tokenizer) -> None:  # type: ignore[no-untyped-def]
    g = await gen.prepare_chat(ChatRequest(NAME, QUESTION, Sampling(temperature=0.0, max_tokens=30)))
    result = await gen.complete(g)
    assert result.choices[0].text == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert result.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert result.usage.completion_tokens == len(tokenizer.encode(result.choices[0].text, add_special_tokens=False)) + 1


async def test_stream_deltas_join_to_the_unary_text(gen: Generator) -> None:
    req = ChatRequest(NAME, QUESTION, Sampling(temperature=0.0, max_tokens=30))
    unary = await gen.complete(await gen.prepare_chat(req))
    deltas = [d async for d in gen.stream(await gen.prepare_chat(req))]
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == unary.choices[0].text
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]


async def test_max_tokens_and_stop(gen: Generator) -> None:
    long = await gen.complete(
        await gen.prepare_completion(CompletionRequest(NAME, "Once upon a time", Sampling(max_tokens=6)))
    )
    assert long.choices[0].finish_reason == "length"
    assert long.usage.completion_tokens == 6
    stopped = await gen.complete(
        await gen.prepare_chat(ChatRequest(NAME, QUESTION, Sampling(temperature=0.0, max_tokens=30, stop=("Paris",))))
    )
    assert stopped.choices[0].text == "The capital of France is "
    assert stopped.choices[0].finish_reason == "stop"


async def test_same_seed_same_text(gen: Generator) -> None:
    req = CompletionRequest(NAME, "My favourite food is", Sampling(temperature=1.0, max_tokens=12, seed=42))
    a = await gen.complete(await gen.prepare_completion(req))
    b = await gen.complete(await gen.prepare_completion(req))
    assert a.choices[0].text == b.choices[0].text


async def test_abort_frees_the_engine_and_concurrency_works(gen: Generator, engine: HfEngine) -> None:
    endless = await gen.prepare_completion(CompletionRequest(NAME, "Count:", Sampling(max_tokens=400, ignore_eos=True)))
    stream = gen.stream(endless)
    first = await stream.__anext__()
    assert first.text
    assert engine.num_running() == 1
    hi = CompletionRequest(NAME, "Hi", Sampling(max_tokens=4, ignore_eos=True))
    short = [await gen.prepare_completion(hi) for _ in range(2)]
    results = await asyncio.gather(*(gen.complete(g) for g in short))
    assert [r.usage.completion_tokens for r in results] == [4, 4]
    await stream.aclose()  # what a cancelled gRPC call does
    assert engine.num_running() == 0
    assert endless.completion_tokens < 400


@pytest.mark.parametrize(
    ("request_", "failure", "param"),
    [
        (ChatRequest("other", QUESTION), Failure.MODEL_NOT_FOUND, "model"),
        (ChatRequest(NAME, []), Failure.INVALID_REQUEST, "messages"),
        (ChatRequest(NAME, [Message("robot", "x")]), Failure.INVALID_REQUEST, "messages[0].role"),
        (ChatRequest(NAME, QUESTION, Sampling(max_tokens=600)), Failure.CONTEXT_LENGTH_EXCEEDED, "max_tokens"),
        (ChatRequest(NAME, [Message("user", "word " * 600)]), Failure.CONTEXT_LENGTH_EXCEEDED, "messages"),
        (ChatRequest(NAME, QUESTION, Sampling(top_p=1.5)), Failure.INVALID_REQUEST, "top_p"),
        (ChatRequest(NAME, QUESTION, Sampling(repetition_penalty=0.0)), Failure.INVALID_REQUEST, "repetition_penalty"),
        (
            ChatRequest(NAME, QUESTION, Sampling(repetition_penalty=1.4e-45)),
            Failure.INVALID_REQUEST,
            "repetition_penalty",
        ),
    ],
)
async def test_request_checks(gen: Generator, request_: ChatRequest, failure: Failure, param: str) -> None:
    with pytest.raises(ChatgenError) as info:
        await gen.prepare_chat(request_)
    assert info.value.failure is failure
    assert info.value.param == param


async def test_model_without_chat_template(gen: Generator, engine: HfEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.tokenizer, "chat_template", None)
    with pytest.raises(ChatgenError) as info:
        await gen.prepare_chat(ChatRequest(NAME, QUESTION))
    assert info.value.failure is Failure.NO_CHAT_TEMPLATE


def test_incremental_decoder_holds_back_a_split_stop_string(tokenizer) -> None:  # type: ignore[no-untyped-def]
    decoder = _IncrementalDecoder(tokenizer, ("END",))
    ids = tokenizer.encode("hello there EN", add_special_tokens=False)
    text, stopped = decoder.add(ids)
    assert not stopped
    assert text == "hello there "  # "EN" could be the start of "END"
    text, stopped = decoder.add(tokenizer.encode("D and more", add_special_tokens=False))
    assert stopped
    assert text == ""


async def test_prompts_are_rendered_off_the_event_loop(gen: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt's template and tokenizer (100 ms for 16k tokens) must not stall the streams the loop serves."""
    threads: list[str] = []

    def spying(render):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return render(*args)

        return run

    monkeypatch.setattr(generation, "render_chat", spying(generation.render_chat))
    monkeypatch.setattr(generation, "render_completion", spying(generation.render_completion))
    chat = await gen.prepare_chat(ChatRequest(NAME, QUESTION, Sampling(max_tokens=4)))
    completion = await gen.prepare_completion(CompletionRequest(NAME, "Once upon a time", Sampling(max_tokens=4)))
    assert len(chat.prompt_token_ids) > 10 and len(completion.prompt_token_ids) == 4
    loop_thread = threading.current_thread().name
    assert len(threads) == 2 and all(t.startswith("chatgen-render") and t != loop_thread for t in threads), threads
