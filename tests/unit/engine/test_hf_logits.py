"""engine.hf_logits: the hf engine's logits processors, on score rows."""

from __future__ import annotations

import torch

from chatgen.engine.hf_logits import AllowedTokens, DeadEnd


def test_a_grammar_that_allows_no_token_ends_the_choice_with_eos() -> None:
    """A row masked entirely to -inf (no token can continue the schema) gets EOS instead of failing sampling;
    rows with a token left are not touched."""
    scores = torch.full((2, 6), float("-inf"))
    scores[1, 3] = 1.5
    out = DeadEnd([2])(None, scores.clone())
    assert out[0].tolist() == [float("-inf")] * 2 + [0.0] + [float("-inf")] * 3
    assert out[1].tolist() == scores[1].tolist()


def test_allowed_tokens_mask_every_other_token() -> None:
    scores = torch.arange(6, dtype=torch.float32).repeat(2, 1)
    out = AllowedTokens((1, 4))(None, scores.clone())
    for row in out.tolist():
        assert row == [float("-inf"), 1.0, float("-inf"), float("-inf"), 4.0, float("-inf")]
