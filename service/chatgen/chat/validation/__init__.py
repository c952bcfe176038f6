"""The one validation layer: a request message becomes a typed plan here, with the error table's `param` for
every field at fault (chat.py, completion.py; what both share in sampling.py). Only what needs the model's
tokenizer (the prompt's length against the context, token ids against the vocabulary) is checked later, where
the prompt is tokenized; only transport limits (body size, headers) are Envoy's."""

from chatgen.chat.validation.chat import ChatPlan, validate_chat
from chatgen.chat.validation.completion import CompletionPlan, validate_completion
from chatgen.chat.validation.sampling import MAX_N, MAX_TOP_LOGPROBS, SamplingPlan, ServedModel

__all__ = [
    "MAX_N",
    "MAX_TOP_LOGPROBS",
    "ChatPlan",
    "CompletionPlan",
    "SamplingPlan",
    "ServedModel",
    "validate_chat",
    "validate_completion",
]
