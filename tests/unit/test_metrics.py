"""chatgen.metrics: the families a finished call, the engine's requests and admission feed, on the real hf engine
(the running-requests gauge reads it)."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.engine.hf_engine import HfEngine
from chatgen.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_finished_call_counts_by_rpc_and_status(hf_engine: HfEngine) -> None:
    metrics = Metrics(hf_engine)
    metrics.call_finished("CreateChatCompletion", grpc.StatusCode.OK, 0.4, 0.1, prompt_tokens=12, completion_tokens=5)
    metrics.call_finished("CreateChatCompletion", grpc.StatusCode.INVALID_ARGUMENT, 0.01, None, 0, 0)
    got = samples(metrics)
    assert got[("chatgen_requests_total", (("code", "OK"), ("rpc", "CreateChatCompletion")))] == 1
    assert got[("chatgen_requests_total", (("code", "INVALID_ARGUMENT"), ("rpc", "CreateChatCompletion")))] == 1
    assert got[("chatgen_prompt_tokens_total", ())] == 12 and got[("chatgen_generation_tokens_total", ())] == 5
    # TTFT only for calls that produced a token; e2e for every call.
    assert got[("chatgen_time_to_first_token_seconds_count", (("rpc", "CreateChatCompletion"),))] == 1
    assert got[("chatgen_e2e_request_latency_seconds_count", (("rpc", "CreateChatCompletion"),))] == 2


async def test_engine_requests_gaps_and_admission_gauges(hf_engine: HfEngine) -> None:
    metrics = Metrics(hf_engine)
    admission = Admission(AdmissionLimits(max_running=2, max_waiting=2), on_reject=metrics.rejected.inc)
    metrics.watch(admission)
    metrics.engine_request_started()
    metrics.engine_request_aborted()
    metrics.output_gap(0.02)
    async with admission.slots(2):
        waiter = asyncio.ensure_future(admission.slots(1).__aenter__())
        await asyncio.sleep(0)
        got = samples(metrics)
        assert got[("chatgen_admitted_slots", ())] == 2 and got[("chatgen_waiting_slots", ())] == 1
        waiter.cancel()
    got = samples(metrics)
    assert got[("chatgen_engine_requests_total", ())] == 1 and got[("chatgen_requests_aborted_total", ())] == 1
    assert got[("chatgen_inter_token_latency_seconds_count", ())] == 1
    assert got[("chatgen_engine_running_requests", ())] == 0  # the engine is idle
    assert (got[("chatgen_admitted_slots", ())], got[("chatgen_waiting_slots", ())]) == (0, 0)
