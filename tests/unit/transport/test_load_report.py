"""transport.load_report: the server's load as an ORCA report, in the metadata of every generation call and on the
out-of-band OpenRcaService stream (the gRPC server in this process, transformers engine, real embedded model)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from xds.data.orca.v3.orca_load_report_pb2 import OrcaLoadReport
from xds.service.orca.v3.orca_pb2 import OrcaLoadReportRequest

from chatgen.app import build_service
from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.engine.hf_engine import HfEngine
from chatgen.transport.load_report import MIN_REPORT_SECONDS, ORCA_TRAILER, RATE_SECONDS, LoadReports
from chatgen.v1 import chatgen_pb2 as pb
from tests.support import h2_grpc
from tests.unit.conftest import HF_NAME, in_process_settings


@dataclass(frozen=True)
class Loaded:
    """A running server and the admission whose load it reports."""

    port: int
    admission: Admission


STREAM_METHOD = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics"


@pytest.fixture(scope="module")
async def server(hf_engine: HfEngine) -> AsyncIterator[Loaded]:
    limits = AdmissionLimits(max_running=4, max_waiting=4)
    admission = Admission(limits)
    s = build_service(in_process_settings(hf_engine, limits=limits), hf_engine, admission).server
    await s.start()
    yield Loaded(s.port, admission)
    await s.stop(0)


def chat_request(**fields: object) -> pb.CreateChatCompletionRequest:
    body = {"model": HF_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    return json_format.ParseDict({**body, **fields}, pb.CreateChatCompletionRequest())


def report_in(reply: h2_grpc.RawReply) -> OrcaLoadReport:
    return OrcaLoadReport.FromString(reply.binary(ORCA_TRAILER))


def test_the_report_is_the_admission_and_the_engine(hf_engine: HfEngine) -> None:
    admission = Admission(AdmissionLimits(max_running=4, max_waiting=4))
    admission._take(3)
    reports = LoadReports(admission, lambda: hf_engine.kv_cache_usage)
    for ok in (True, True, True, False):
        reports.call_ended(ok)
    report = reports.report()
    assert report.application_utilization == pytest.approx(0.75)
    # Calls finished, and failed, per second over the last RATE_SECONDS.
    assert (report.rps_fractional, report.eps) == (4 / RATE_SECONDS, 1 / RATE_SECONDS)
    assert dict(report.named_metrics) == {"num_requests_running": 3, "num_requests_waiting": 0}
    # The transformers engine reports no KV cache: none is made up.
    assert "kv_cache_usage_perc" not in report.named_metrics


async def test_every_generation_call_carries_the_load_in_its_metadata(server: Loaded) -> None:
    # grpc's own client keeps this trailer from its application (its balancers read it): a bare HTTP/2 call.
    address = f"127.0.0.1:{server.port}"
    service = "/chatgen.v1.ChatService/"
    streamed = await asyncio.to_thread(
        h2_grpc.call, address, service + "StreamChatCompletion", chat_request().SerializeToString()
    )
    answered = await asyncio.to_thread(
        h2_grpc.call, address, service + "CreateChatCompletion", chat_request().SerializeToString()
    )
    refused = await asyncio.to_thread(
        h2_grpc.call, address, service + "CreateChatCompletion", chat_request(model="nope").SerializeToString()
    )
    assert len(streamed.messages) >= 3 and streamed.trailers["grpc-status"] == b"0"
    assert len(answered.messages) == 1 and ORCA_TRAILER in answered.headers
    assert refused.messages == [] and refused.headers["grpc-status"] == b"5"  # NOT_FOUND, trailers only
    # Each reported once its own call had let go of its slot: the server idle.
    for reply in (streamed, answered, refused):
        report = report_in(reply)
        assert report.application_utilization == 0.0
        assert report.named_metrics["num_requests_running"] == 0


async def test_the_out_of_band_stream_reports_every_interval(server: Loaded) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream_metrics = channel.unary_stream(
            STREAM_METHOD,
            request_serializer=OrcaLoadReportRequest.SerializeToString,
            response_deserializer=OrcaLoadReport.FromString,
        )
        # Shorter than the floor: held to MIN_REPORT_SECONDS.
        call = stream_metrics(OrcaLoadReportRequest(report_interval=duration_pb2.Duration(nanos=10_000_000)))
        reports = aiter(call)
        first, started = await anext(reports), time.monotonic()
        assert first.named_metrics["num_requests_running"] == 0
        async with contextlib.AsyncExitStack() as held:
            for _ in range(2):
                await held.enter_async_context(server.admission.slots(1))
            second = await anext(reports)
        assert time.monotonic() - started >= MIN_REPORT_SECONDS - 0.05
        assert second.named_metrics["num_requests_running"] == 2
        assert second.application_utilization == pytest.approx(0.5)
        call.cancel()
    await asyncio.sleep(0)
