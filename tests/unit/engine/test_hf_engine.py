"""engine.hf_engine on the real embedded model: what its options do to generation."""

from __future__ import annotations

import json

from chatgen.engine.base import EngineRequest, SamplingOptions
from chatgen.engine.hf_engine import HfEngine


async def test_ignore_eos_under_a_schema_ends_with_the_grammar(hf_engine: HfEngine) -> None:
    """Once the object is complete the grammar allows only EOS; ignore_eos banned that too and sampling failed
    ("probability tensor contains inf/nan", found by the fuzz tests). Under a schema the grammar ends the output."""
    ids = hf_engine.tokenizer.encode("Reply with a JSON object: ")
    options = SamplingOptions(max_tokens=200, temperature=1.0, json_schema='{"type": "object"}', ignore_eos=True)
    outputs = [out async for out in hf_engine.generate(EngineRequest("hf-eos-1", ids, options))]
    text = "".join(out.text for out in outputs)
    assert outputs[-1].finish_reason in ("stop", "length")
    if outputs[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_a_grammar_that_allows_no_token_ends_the_choice_with_eos() -> None:
    """A row masked entirely to -inf (no token can continue the schema) gets EOS instead of failing sampling;
    rows with a token left are not touched."""
    import torch

    from chatgen.engine.hf_engine import _DeadEnd

    scores = torch.full((2, 6), float("-inf"))
    scores[1, 3] = 1.5
    out = _DeadEnd([2])(None, scores.clone())
    assert out[0].tolist() == [float("-inf")] * 2 + [0.0] + [float("-inf")] * 3
    assert out[1].tolist() == scores[1].tolist()
