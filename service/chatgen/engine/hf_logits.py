"""The hf engine's logits processors: what transformers' generate() lacks of vLLM's sampling (OpenAI's
penalties, logit bias, allowed token ids, a minimum length that stop tokens also obey, decoding held to a
constraint), each applied to every step's scores."""

from __future__ import annotations

from typing import Any

from chatgen.engine.base import Constraint, SamplingOptions


def compile_constraint(compiler: Any, constraint: Constraint) -> Any:
    """xgrammar's compiled grammar for a constraint."""
    if constraint.kind == "json":
        return compiler.compile_json_schema(constraint.text)
    if constraint.kind == "regex":
        return compiler.compile_regex(constraint.text)
    if constraint.kind == "lark":
        return compiler.compile_lark(constraint.text)
    return compiler.compile_grammar(constraint.text)


def processors(
    o: SamplingOptions, prompt_len: int, capture: Any, grammar: Any, stop_ids: set[int], eos_ids: set[int]
) -> Any:
    """The processors a request's options call for. `capture` (logprobs) comes first, so it sees the model's raw
    scores, as vLLM reports them."""
    from transformers import LogitsProcessorList, MinNewTokensLengthLogitsProcessor

    out = LogitsProcessorList()
    if capture is not None:
        out.append(capture)
    if o.logit_bias:
        out.append(LogitBias(o.logit_bias))
    if o.allowed_token_ids:
        out.append(AllowedTokens(o.allowed_token_ids))
    if o.min_tokens and stop_ids:
        # vLLM's min_tokens holds back stop token ids too, not only EOS.
        out.append(MinNewTokensLengthLogitsProcessor(prompt_len, o.min_tokens, sorted(stop_ids)))
    if grammar is not None:
        import xgrammar.contrib.hf

        out.append(xgrammar.contrib.hf.LogitsProcessor(grammar))
        out.append(DeadEnd(sorted(eos_ids)))
    if o.presence_penalty or o.frequency_penalty:
        out.append(PresenceFrequencyPenalty(prompt_len, o))
    return out


class AllowedTokens:
    """vLLM's allowed_token_ids: every other token is masked out."""

    def __init__(self, allowed: tuple[int, ...]) -> None:
        self._allowed = list(allowed)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        mask = torch.full_like(scores, float("-inf"))
        mask[:, self._allowed] = 0.0
        return scores + mask


class DeadEnd:
    """Ends a choice whose grammar allows no token at all (a schema demanding text the vocabulary cannot write
    under it, such as an enum of raw control characters): EOS instead of a row of -inf, on which sampling fails
    with inf/nan. The output then stops short of the schema, with finish_reason "stop"."""

    def __init__(self, eos_ids: list[int]) -> None:
        self._eos = eos_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        dead = torch.isneginf(scores).all(dim=-1)
        if bool(dead.any()):
            scores[dead.nonzero(as_tuple=True)[0][:, None], torch.tensor(self._eos)] = 0.0
        return scores


class LogitBias:
    def __init__(self, bias: tuple[tuple[int, float], ...]) -> None:
        self._ids = [token for token, _ in bias]
        self._values = [value for _, value in bias]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores[:, self._ids] += torch.tensor(self._values, dtype=scores.dtype)
        return scores


class PresenceFrequencyPenalty:
    """OpenAI's presence/frequency penalties over the tokens generated so far (transformers has neither)."""

    def __init__(self, prompt_len: int, o: SamplingOptions) -> None:
        self._prompt_len = prompt_len
        self._presence = o.presence_penalty
        self._frequency = o.frequency_penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self._prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self._frequency * counts - self._presence * (counts > 0).to(scores.dtype)
