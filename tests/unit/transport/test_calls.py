"""transport.calls: the call log's interceptor around a real servicer on the transformers engine, in particular a
stream whose caller goes away while the server is between chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf import struct_pb2

from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.chat.api import ChatApi
from chatgen.chat.validation import ServedModel
from chatgen.engine.hf_engine import HfEngine
from chatgen.transport.calls import REQUEST_ID_KEY, CallLog, CallLogInterceptor, CallRecord
from chatgen.transport.servicers import GenerateServicer
from chatgen.v1 import chatgen_pb2 as pb
from tests.unit.conftest import HF_NAME


class Context:
    """Stands in for grpc.aio.ServicerContext: what a stream that is never aborted asks of it."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_KEY, "left-1"),)

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        pass


@dataclass
class Details:
    method: str


class Ended(CallLog):
    """The call log, keeping what each call ended with and how many requests still ran at that moment."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(None, log_requests=False)
        self.admission = admission
        self.calls: list[tuple[str, grpc.StatusCode, int, int]] = []

    def end(self, call: CallRecord) -> None:
        self.calls.append((call.request_id, call.code, call.stats.completion_tokens, self.admission.running))


async def test_a_stream_closed_while_between_chunks_ends_its_request_then_is_logged_cancelled(
    hf_engine: HfEngine,
) -> None:
    """grpc cancels a stream's task when its caller goes away; when that lands while the task writes a chunk, the
    handler's generator is left at a yield and closed from outside (by the event loop, once collected). The close
    must reach the engine request and the call's status before the log records the call."""
    admission = Admission(AdmissionLimits(max_running=4))
    api = ChatApi(hf_engine, ServedModel(HF_NAME, hf_engine.name), None, admission=admission)
    servicer = GenerateServicer(api)
    calls = Ended(admission)

    async def continuation(details: Details) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(servicer.StreamCompletion)

    handler = await CallLogInterceptor(calls).intercept_service(
        continuation,  # type: ignore[arg-type]
        Details("/chatgen.v1.GenerateService/StreamCompletion"),  # type: ignore[arg-type]
    )
    request = pb.CreateCompletionRequest(
        model=HF_NAME, prompt=struct_pb2.Value(string_value="Once upon a time"), max_tokens=200, ignore_eos=True
    )
    stream: AsyncIterator[pb.StreamCompletionResponse] = handler.unary_stream(request, Context())
    first = await anext(stream)
    assert first.object == "text_completion" and admission.running == 1
    await stream.aclose()  # type: ignore[attr-defined]
    ((request_id, code, tokens, running),) = calls.calls
    assert (request_id, code, running) == ("left-1", grpc.StatusCode.CANCELLED, 0)
    assert 1 <= tokens < 200
