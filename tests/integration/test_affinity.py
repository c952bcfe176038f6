"""The shared gateway's `balance: affinity`: the requests of one conversation go to one replica (whose prefix cache
holds its earlier turns) by the conversation's key — an x-session-id header, prompt_cache_key, user, the Messages
API's metadata.user_id, a Responses API conversation — and go elsewhere when that replica is full or gone. Two
token-simulator replicas behind a real Envoy; which replica served a call is read from the replicas' own metrics."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.conftest import Service
from tests.support.fleet import Gateway, gateway, replica, served

pytestmark = pytest.mark.integration

MODEL = "model-c"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, list[Service]]]:
    with replica(MODEL) as r1, replica(MODEL) as r2:
        with gateway({MODEL: [r1, r2]}, tmp_path_factory.mktemp("gateway"), "affinity") as gw:
            yield gw, [r1, r2]


def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{gw.base}/v1", max_retries=0, timeout=60)


def where(replicas: list[Service], rpc: str, call: Callable[[], object]) -> int:
    """Which replica served `call` (one call of `rpc`): the one whose count of OK calls rose by one."""
    before = [served(r, rpc) for r in replicas]
    call()
    rose = [served(r, rpc) - b for r, b in zip(replicas, before, strict=True)]
    assert sorted(rose) == [0, 1], rose
    return rose.index(1)


def test_each_key_keeps_its_requests_on_one_replica_and_keys_spread(pair: tuple[Gateway, list[Service]]) -> None:
    gw, replicas = pair
    chat, messages = "CreateChatCompletion", "CreateMessage"
    api = sdk(gw)
    claude = anthropic.Anthropic(api_key="unused", base_url=gw.base, max_retries=0)
    ways: dict[str, Callable[[str], tuple[str, Callable[[], object]]]] = {
        "user": lambda k: (chat, lambda: api.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, user=k)),
        "prompt_cache_key": lambda k: (
            chat,
            lambda: api.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, prompt_cache_key=k),
        ),
        "x-session-id": lambda k: (
            "CreateCompletion",
            lambda: api.completions.create(model=MODEL, prompt="hi", max_tokens=3, extra_headers={"x-session-id": k}),
        ),
        "metadata.user_id": lambda k: (
            messages,
            lambda: claude.messages.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, metadata={"user_id": k}
            ),
        ),
    }
    homes: dict[str, set[int]] = {}
    for way, make in ways.items():
        for i in range(6):
            key = f"{way}-conversation-{i}"
            rpc, call = make(key)
            homes[key] = {where(replicas, rpc, call) for _ in range(4)}
    # Every key's 4 requests on one replica; 24 keys over 2 replicas: both hold some (all on one: p = 2^-23).
    assert all(len(home) == 1 for home in homes.values()), homes
    assert {next(iter(home)) for home in homes.values()} == {0, 1}, homes


def test_a_responses_conversation_stays_on_the_replica_of_its_first_turn(pair: tuple[Gateway, list[Service]]) -> None:
    """No key but the conversation itself: the gateway names a first turn's conversation, the server starts its
    response ids with that name, and each later turn (previous_response_id) hashes to the same replica."""
    gw, replicas = pair
    api = sdk(gw)
    homes = []
    for _ in range(8):
        ids: list[str] = []
        homes.append({where(replicas, "CreateResponse", _turn(api, ids)) for _ in range(4)})
        # Every id of the conversation starts with its key.
        assert len({rid[:21] for rid in ids}) == 1 and len(set(ids)) == 4, ids
    assert all(len(home) == 1 for home in homes), homes


async def test_a_hot_key_spills_over_to_the_other_replica(pair: tuple[Gateway, list[Service]]) -> None:
    """Bounded load: one key's 24 concurrent streams do not all queue on its replica."""
    gw, replicas = pair
    home = where(replicas, "CreateChatCompletion", lambda: sdk(gw).chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=3, user="hot"))  # fmt: skip
    api = openai.AsyncOpenAI(api_key="unused", base_url=f"{gw.base}/v1", max_retries=0, timeout=60)
    before = [served(r, "StreamChatCompletion") for r in replicas]

    async def one() -> None:
        stream = await api.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, stream=True, user="hot")
        chunks = [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason == "length"

    await asyncio.gather(*(one() for _ in range(24)))
    got = [served(r, "StreamChatCompletion") - b for r, b in zip(replicas, before, strict=True)]
    assert sum(got) == 24 and got[1 - home] >= 3 and got[home] >= got[1 - home], (home, got)


def test_a_key_moves_to_another_replica_when_its_own_goes(tmp_path: Path) -> None:
    with replica(MODEL) as r1, replica(MODEL) as r2, gateway({MODEL: [r1, r2]}, tmp_path, "affinity") as gw:
        replicas, api = [r1, r2], sdk(gw)
        rpc = "CreateChatCompletion"
        keys = {f"k{i}": where(replicas, rpc, _chat(api, f"k{i}")) for i in range(8)}
        assert set(keys.values()) == {0, 1}, keys
        gone = replicas[0]
        gone.process.send_signal(signal.SIGTERM)
        assert gone.process.wait(30) is not None
        # Every key is served, by the replica that is left: nothing fails for the keys that lived on the other.
        for key in keys:
            before = served(replicas[1], rpc)
            _chat(api, key)()
            assert served(replicas[1], rpc) == before + 1


def _chat(api: openai.OpenAI, key: str) -> Callable[[], object]:
    return lambda: api.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, user=key)


def _turn(api: openai.OpenAI, ids: list[str]) -> Callable[[], object]:
    """The conversation's next turn, continuing the last of `ids`, whose list it adds its own id to."""

    def turn() -> None:
        extra = {"previous_response_id": ids[-1]} if ids else {}
        ids.append(api.responses.create(model=MODEL, input="hi", max_output_tokens=3, **extra).id)  # type: ignore[call-overload]

    return turn
