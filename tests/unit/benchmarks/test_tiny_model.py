"""The benchmark's serving-bound model: tiny, seeded, cached, and the embedded model's tokenizer and template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks import tiny_model
from benchmarks.tiny_model import TINY_MODEL, bench_model, tiny_model_dir


def test_tiny_model_is_one_narrow_layer_with_the_base_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    path = tiny_model_dir(model_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (1, 64, 1)
    assert config["vocab_size"] == 49152
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert 10e6 < weights < 16e6, weights  # the 49k x 64 embedding, tied, and little else

    base, tiny = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        base.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tiny("Paris is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5


def test_tiny_model_is_seeded_and_reused(model_dir: Path, tmp_path: Path) -> None:
    first = tiny_model_dir(model_dir, tmp_path / "a")
    second = tiny_model_dir(model_dir, tmp_path / "b")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(model_dir, tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_bench_model_names(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny_model, "default_cache_dir", lambda: tmp_path)
    choice = bench_model(TINY_MODEL)
    assert choice.served_name == TINY_MODEL
    assert Path(choice.path).parent == tmp_path
    assert bench_model(str(model_dir)).path == str(model_dir.resolve())
