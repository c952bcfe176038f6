"""The benchmark's requests: a seeded synthetic chat workload, or a replayed JSONL file.

Synthetic requests look like chat traffic in shape: prompt and output lengths are log-normal (a long tail of
long prompts and replies around a typical size), the text is random common words, and each request asks for an
exact number of output tokens (`ignore_eos`), so every server under test does exactly the same work.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part over "
    "new sound take only little work know place year live me back give most very after thing our just name good "
    "sentence man think say great where help through much before line right too mean old any same tell boy follow "
    "came want show also around form three small set put end does another well large must big even such because "
    "turn here why ask went men read need land different home us move try kind hand picture again change off play "
    "spell air away animal house point page letter mother answer found study still learn should world high every "
    "near add food between own below country plant last school father keep tree never start city earth eye light"
).split()


@dataclass(frozen=True)
class Request:
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    # vLLM's per-request `stream_interval` (tokens per streamed chunk); 1: every token its own chunk, and the
    # field is not sent.
    stream_interval: int = 1

    def messages_list(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]


def prompt_ids(tokenizer: Any, request: Request) -> list[int]:
    """The request's messages through the model's chat template, as token ids (for the in-process targets)."""
    ids: Any = tokenizer.apply_chat_template(request.messages_list(), tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]  # transformers 5 returns a BatchEncoding
    return [int(i) for i in ids]


def _lognormal_int(rng: random.Random, median: int, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(median * math.exp(rng.gauss(0.0, sigma)))))


def synthetic(
    n: int, seed: int, tokenizer: Any, input_median: int, output_median: int, max_model_len: int = 2048
) -> list[Request]:
    """`n` chat requests; prompt lengths are counted in the model's tokens (before the chat template)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        output_len = _lognormal_int(rng, output_median, 0.5, 4, max_model_len // 4)
        input_len = _lognormal_int(rng, input_median, 0.7, 8, max_model_len - output_len - 64)
        words = [rng.choice(WORDS) for _ in range(input_len * 2)]
        ids = tokenizer.encode(" ".join(words), add_special_tokens=False)[:input_len]
        text = tokenizer.decode(ids).strip()
        requests.append(Request(({"role": "user", "content": text},), output_len))
    return requests


def replay(path: Path, default_max_tokens: int) -> list[Request]:
    """One JSON object per line: `{"messages": [...]}` or `{"prompt": "..."}`, optionally `"max_tokens"`."""
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "messages" in item:
            messages = tuple({"role": m["role"], "content": m["content"]} for m in item["messages"])
        elif "prompt" in item:
            messages = ({"role": "user", "content": item["prompt"]},)
        else:
            raise ValueError(f"{path}:{number}: needs 'messages' or 'prompt'")
        requests.append(Request(messages, int(item.get("max_tokens", default_max_tokens))))
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests
