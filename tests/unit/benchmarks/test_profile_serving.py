"""The profiler's reading of py-spy's raw (collapsed-stack) output."""

from __future__ import annotations

from pathlib import Path

from benchmarks.profile_serving import layer_of, read_raw

ENTRY = "<module> (chatgen/__main__.py);main (chatgen/cli.py);Handle._run (asyncio/events.py)"
RAW = f"""\
{ENTRY} 50
{ENTRY};stream (chatgen/transport/status.py);chat_chunks (chatgen/transport/servicers.py) 30
{ENTRY};decode (transformers/tokenization_utils_base.py) 15
Thread.run (threading.py) 5
"""


def test_layers_come_from_the_innermost_frame() -> None:
    assert layer_of("Handle._run (asyncio/events.py)") == "asyncio"
    assert layer_of("chat_chunks (chatgen/transport/servicers.py)") == "chatgen"
    assert layer_of("process_outputs (vllm/v1/engine/output_processor.py)") == "vllm front end"
    assert layer_of("decode (transformers/tokenization_utils_base.py)") == "tokenizer"
    assert layer_of("Thread.run (threading.py)") == "other"


def test_raw_stacks_are_counted_by_layer_self_and_inclusive(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    samples = read_raw(raw)
    assert samples.total == 100
    assert samples.layers == {"asyncio": 50, "chatgen": 30, "tokenizer": 15, "other": 5}
    assert samples.innermost["chat_chunks (chatgen/transport/servicers.py)"] == 30
    # Inclusive: every chatgen frame on a stack, but not the entry point every stack starts in.
    assert samples.chatgen == {
        "stream (chatgen/transport/status.py)": 30,
        "chat_chunks (chatgen/transport/servicers.py)": 30,
    }
