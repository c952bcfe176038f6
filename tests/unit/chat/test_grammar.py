"""chat.grammar: new decoding constraints (schemas, regexes, grammars) compile in a worker process within a time
limit; one too slow is a 400 naming its field and its compile is stopped (the worker is killed), as is one whose
caller goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatgen.chat.grammar import GrammarCheck
from chatgen.chat.validation.schemas import Grammar
from chatgen.errors import ApiError, Failure

PARAM = "response_format.json_schema.schema"
SMALL = Grammar(json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}), PARAM)
# Within the static bounds, and ≈ 0.5 s to compile on the embedded model's vocabulary.
SLOW = Grammar(json.dumps({"type": "string", "minLength": 100}), PARAM)


@pytest.fixture
async def check(model_dir: Path) -> AsyncIterator[GrammarCheck]:
    grammars = GrammarCheck(str(model_dir), seconds=60)
    grammars.start()
    await grammars.check(SMALL)  # the worker has loaded the tokenizer
    yield grammars
    grammars.close()


async def test_wait_started_returns_once_the_worker_has_loaded_the_tokenizer(model_dir: Path) -> None:
    grammars = GrammarCheck(str(model_dir), seconds=60)
    try:
        await grammars.wait_started()
        worker = grammars._worker
        assert worker is not None and worker.ready and worker.process.is_alive()
        await grammars.wait_started()  # once started, at once
        assert grammars._worker is worker
        await grammars.check(SMALL)
    finally:
        grammars.close()


async def test_a_schema_that_compiles_passes_and_is_remembered(check: GrammarCheck) -> None:
    worker = check._worker
    check.close()  # a remembered schema needs no worker
    await check.check(SMALL)
    assert worker is not None and not worker.process.is_alive() and check._worker is None


async def test_a_schema_over_the_time_limit_is_400_and_its_compile_stops(check: GrammarCheck) -> None:
    worker = check._worker
    assert worker is not None
    check.seconds = 0.05
    with pytest.raises(ApiError) as info:
        await check.check(SLOW)
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, PARAM)
    assert "0.05 s" in info.value.message
    assert not worker.process.is_alive()
    # Remembered: the same schema is refused at once, without a worker.
    with pytest.raises(ApiError):
        await check.check(SLOW)
    assert check._worker is None


async def test_a_caller_that_goes_away_stops_the_compile(check: GrammarCheck) -> None:
    worker = check._worker
    assert worker is not None
    task = asyncio.ensure_future(check.check(SLOW))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not worker.process.is_alive()
    # A new worker serves the next schema, which compiles as before.
    check.seconds = 60
    await check.check(SLOW)
    assert check._worker is not None and check._worker.process.is_alive()


async def test_a_schema_the_compiler_rejects_is_400_with_its_reason(check: GrammarCheck) -> None:
    bad = Grammar(json.dumps({"type": "object", "$ref": "#/$defs/missing"}), "tools[0].function.parameters")
    with pytest.raises(ApiError) as info:
        await check.check(bad)
    assert info.value.param == "tools[0].function.parameters"
    assert "cannot be used for decoding" in info.value.message


async def test_a_worker_that_dies_compiling_is_a_400_and_the_next_schema_gets_a_new_one(check: GrammarCheck) -> None:
    """The compiler is native code: a schema that kills it is refused, and the server's other schemas go on."""
    worker = check._worker
    assert worker is not None
    task = asyncio.ensure_future(check.check(SLOW))
    await asyncio.sleep(0.1)
    worker.process.kill()  # as a crash in the compiler would end it
    with pytest.raises(ApiError) as info:
        await task
    assert info.value.param == PARAM and "compiler failed" in info.value.message
    await check.check(Grammar(json.dumps({"type": "array"}), PARAM))
    assert check._worker is not None and check._worker is not worker


@pytest.mark.parametrize(
    ("grammar", "compiles"),
    [
        (Grammar("[0-9]{3}-[a-z]+", "structured_outputs.regex", "regex"), True),
        (Grammar("[0-9", "structured_outputs.regex", "regex"), False),
        (Grammar('root ::= "a" | "b"', "structured_outputs.grammar", "ebnf"), True),
        (Grammar("root ::= undefined_rule", "structured_outputs.grammar", "ebnf"), False),
        (Grammar('start: "x" "y"', "structured_outputs.grammar", "lark"), True),
        (Grammar("start: (", "structured_outputs.grammar", "lark"), False),
    ],
)
async def test_regexes_and_grammars_are_compiled_by_their_kind(
    check: GrammarCheck, grammar: Grammar, compiles: bool
) -> None:
    if compiles:
        await check.check(grammar)
        return
    with pytest.raises(ApiError) as info:
        await check.check(grammar)
    assert (info.value.failure, info.value.param) == (Failure.INVALID_REQUEST, grammar.param)
    assert "cannot be used for decoding" in info.value.message
