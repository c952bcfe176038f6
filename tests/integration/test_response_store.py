"""The Responses API's state across replicas and callers: two chatgen replicas sharing one real redis-server
continue each other's conversations, and where API keys are on, one key's responses are invisible to another."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import MODEL_NAME, Service, running_service
from tests.support.redis import redis_server

pytestmark = pytest.mark.integration

KEYS = ("sk-team-a", "sk-team-b")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def replicas(redis_url: str, model_dir: Path) -> Iterator[tuple[Service, Service]]:
    flags = ("--response-store", redis_url, "--api-key", KEYS[0], "--api-key", KEYS[1])
    with running_service("hf", *flags) as one, running_service("hf", *flags) as two:
        yield one, two


def sdk(service: Service, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{service.http_base}/v1", max_retries=0, timeout=180)


def test_a_conversation_continues_on_another_replica(replicas: tuple[Service, Service], redis_url: str) -> None:
    one, two = (sdk(r, KEYS[0]) for r in replicas)
    first = one.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=10, temperature=0)
    assert redis.Redis.from_url(redis_url).exists(f"chatgen:response:{first.id}") == 1
    follow = "And of Spain?"
    second = two.responses.create(
        model=MODEL_NAME, previous_response_id=first.id, input=follow, max_output_tokens=10, temperature=0
    )
    whole = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": follow},
    ]
    chat = two.chat.completions.create(model=MODEL_NAME, messages=whole, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    assert second.output_text == chat.choices[0].message.content
    assert one.responses.retrieve(second.id).output_text == second.output_text
    texts = [item.content[0].text for item in one.responses.input_items.list(second.id).data]  # type: ignore[union-attr]
    assert texts == [follow, first.output_text, QUESTION]
    two.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        one.responses.retrieve(first.id)
    assert redis.Redis.from_url(redis_url).exists(f"chatgen:response:{first.id}") == 0


def test_store_false_writes_nothing_to_redis(replicas: tuple[Service, Service], redis_url: str) -> None:
    before = set(redis.Redis.from_url(redis_url).scan_iter("chatgen:response:*"))
    client = sdk(replicas[0], KEYS[0])
    response = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=4, store=False)
    assert response.output_text and response.store is False
    assert set(redis.Redis.from_url(redis_url).scan_iter("chatgen:response:*")) == before


def test_another_keys_responses_are_not_visible(replicas: tuple[Service, Service]) -> None:
    mine, theirs = sdk(replicas[0], KEYS[0]), sdk(replicas[1], KEYS[1])
    kept = mine.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=4)
    for attempt in (
        lambda: theirs.responses.retrieve(kept.id),
        lambda: theirs.responses.input_items.list(kept.id),
        lambda: theirs.responses.delete(kept.id),
        lambda: theirs.responses.create(model=MODEL_NAME, input="more", previous_response_id=kept.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        # The same answer as for an id never stored: nothing says the response exists.
        assert err.value.code == "response_not_found"
    assert mine.responses.retrieve(kept.id).id == kept.id
    # x-api-key names the same caller as Bearer does.
    got = httpx.get(f"{replicas[1].http_base}/v1/responses/{kept.id}", headers={"x-api-key": KEYS[0]}, timeout=30)
    assert got.status_code == 200 and got.json()["id"] == kept.id
    anonymous = httpx.get(f"{replicas[1].http_base}/v1/responses/{kept.id}", timeout=30)
    assert anonymous.status_code == 401
