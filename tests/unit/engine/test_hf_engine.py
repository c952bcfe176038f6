"""engine.hf_engine on the real embedded model: what its options do to generation."""

from __future__ import annotations

import json
import re

from chatgen.engine.base import Constraint, EngineRequest, SamplingOptions
from chatgen.engine.hf_engine import HfEngine


async def test_ignore_eos_under_a_schema_ends_with_the_grammar(hf_engine: HfEngine) -> None:
    """Once the object is complete the grammar allows only EOS; ignore_eos banned that too and sampling failed
    ("probability tensor contains inf/nan", found by the fuzz tests). Under a schema the grammar ends the output."""
    ids = hf_engine.tokenizer.encode("Reply with a JSON object: ")
    options = SamplingOptions(
        max_tokens=200, temperature=1.0, constraint=Constraint("json", '{"type": "object"}'), ignore_eos=True
    )
    outputs = [out async for out in hf_engine.generate(EngineRequest("hf-eos-1", ids, options))]
    text = "".join(out.text for out in outputs)
    assert outputs[-1].finish_reason in ("stop", "length")
    if outputs[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


async def _run(engine: HfEngine, prompt: str, options: SamplingOptions) -> tuple[str, list[int], str | None]:
    ids = engine.tokenizer.encode(prompt)
    outputs = [out async for out in engine.generate(EngineRequest(f"hf-{id(options)}", ids, options))]
    tokens = [t for out in outputs for t in out.token_ids]
    return "".join(out.text for out in outputs), tokens, outputs[-1].finish_reason


async def test_min_tokens_holds_back_eos_and_stop_tokens(hf_engine: HfEngine) -> None:
    eos = hf_engine.tokenizer.eos_token_id
    # Greedy "Hi" ends at once when EOS may be chosen (the bias makes it the most likely token).
    free = SamplingOptions(max_tokens=10, temperature=0.0, logit_bias=((eos, 100.0),))
    assert len((await _run(hf_engine, "Hi", free))[1]) == 1
    held = SamplingOptions(max_tokens=10, temperature=0.0, logit_bias=((eos, 100.0),), min_tokens=4)
    _, tokens, finish = await _run(hf_engine, "Hi", held)
    assert len(tokens) == 5 and tokens[-1] == eos and eos not in tokens[:4] and finish == "stop"


async def test_allowed_token_ids_are_the_only_tokens_sampled(hf_engine: HfEngine) -> None:
    allowed = tuple(hf_engine.tokenizer.encode(" yes no maybe"))
    options = SamplingOptions(max_tokens=12, temperature=1.0, seed=7, allowed_token_ids=allowed)
    _, tokens, _ = await _run(hf_engine, "Answer:", options)
    assert len(tokens) == 12 and set(tokens) <= set(allowed)


async def test_regex_and_grammar_constraints_hold_the_output(hf_engine: HfEngine) -> None:
    regex = SamplingOptions(max_tokens=20, temperature=1.0, seed=3, constraint=Constraint("regex", "[0-9]{3}-[a-z]{2}"))
    text, _, finish = await _run(hf_engine, "Code:", regex)
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", text) and finish == "stop", text
    ebnf = Constraint("ebnf", 'root ::= "cat" | "dog"')
    text, _, _ = await _run(hf_engine, "Pet:", SamplingOptions(max_tokens=5, temperature=1.0, seed=5, constraint=ebnf))
    assert text in ("cat", "dog")
    lark = Constraint("lark", 'start: "red" | "blue"')
    text, _, _ = await _run(
        hf_engine, "Color:", SamplingOptions(max_tokens=5, temperature=1.0, seed=5, constraint=lark)
    )
    assert text in ("red", "blue")
