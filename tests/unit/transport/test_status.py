"""transport.status.stream: how failures surface on a stream, for gRPC callers and for the REST gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.rpc import status_pb2

from chatgen.errors import ApiError, Failure
from chatgen.transport import status
from chatgen.transport.calls import REQUEST_ID_KEY, CallRecord, bind_call, request_id_from


class _Aborted(Exception):
    pass


class RecordingContext:
    """Stands in for grpc.aio.ServicerContext: records what the relay asks of it."""

    def __init__(
        self, sse: bool, time_remaining: float | None = None, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.sse = sse  # what the servicer passes: True for the gateway's *Http RPCs
        self._metadata = metadata
        self._time_remaining = time_remaining
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.initial: list[tuple[tuple[str, str], ...]] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def send_initial_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.initial.append(md)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._time_remaining

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailing = md

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


async def chunks(fail_after: int | None) -> AsyncIterator[str]:
    for i in range(3):
        if fail_after is not None and i == fail_after:
            raise ApiError(Failure.ENGINE_UNAVAILABLE, "engine died")
        yield f"chunk{i}"


async def relay(ctx: RecordingContext, fail_after: int | None) -> list[str]:
    out: list[str] = []
    async for c in status.stream(ctx, chunks(fail_after), lambda e: f"error:{e.message}", ctx.sse):  # type: ignore[arg-type]
        out.append(c)
    return out


async def test_grpc_caller_gets_chunks_only() -> None:
    assert await relay(RecordingContext(sse=False), None) == ["chunk0", "chunk1", "chunk2"]


async def test_gateway_caller_gets_the_same_chunks() -> None:
    assert await relay(RecordingContext(sse=True), None) == ["chunk0", "chunk1", "chunk2"]


async def test_gateway_mid_stream_error_is_the_last_chunk() -> None:
    ctx = RecordingContext(sse=True)
    assert await relay(ctx, 2) == ["chunk0", "chunk1", "error:engine died"]
    assert ctx.aborted is None


@pytest.mark.parametrize("sse", [False, True])
async def test_error_before_first_chunk_is_a_status_with_openai_json(sse: bool) -> None:
    ctx = RecordingContext(sse=sse)
    with pytest.raises(_Aborted):
        await relay(ctx, 0)
    assert ctx.aborted == (grpc.StatusCode.UNAVAILABLE, "engine died")
    assert dict(ctx.trailing)[status.ERROR_METADATA_KEY] == (
        '{"error":{"message":"engine died","type":"service_unavailable_error","param":null,'
        '"code":"engine_unavailable"}}'
    )


async def test_grpc_mid_stream_error_aborts_with_status() -> None:
    ctx = RecordingContext(sse=False)
    with pytest.raises(_Aborted):
        await relay(ctx, 1)
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.UNAVAILABLE


async def test_sse_stream_past_its_deadline_ends_with_a_timeout_event_and_stops_the_source() -> None:
    closed: list[bool] = []

    async def slow() -> AsyncIterator[str]:
        try:
            for i in range(100):
                await asyncio.sleep(0.05)
                yield f"chunk{i}"
        finally:
            closed.append(True)

    ctx = RecordingContext(sse=True, time_remaining=0.3)
    out = [c async for c in status.stream(ctx, slow(), lambda e: f"error:{e.failure.value}", ctx.sse)]  # type: ignore[arg-type]
    assert 2 <= len(out) - 1 <= 6  # a few chunks in 0.25 s, not all 100
    assert out[-1] == "error:deadline_exceeded"
    assert closed == [True]  # the generation behind the stream was stopped, not left running
    assert ctx.aborted is None  # the HTTP status was sent long ago: the error travels in the stream


async def test_deadline_before_the_first_chunk_is_a_504_status() -> None:
    async def never() -> AsyncIterator[str]:
        await asyncio.sleep(10)
        yield "late"

    ctx = RecordingContext(sse=True, time_remaining=0.1)
    with pytest.raises(_Aborted):
        async for _ in status.stream(ctx, never(), lambda e: "error", ctx.sse):  # type: ignore[arg-type]
            pass
    assert ctx.aborted is not None and ctx.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert '"code":"deadline_exceeded"' in dict(ctx.trailing)[status.ERROR_METADATA_KEY]


# ---- the call record: status and request id ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_call_record() -> Iterator[None]:
    """Each test binds its own call record (the transport's interceptor does it per RPC), none left after."""
    token = bind_call(None)
    yield
    token.var.reset(token)


def _record(ctx: RecordingContext) -> CallRecord:
    record = CallRecord("StreamChatCompletion", request_id_from(ctx))  # type: ignore[arg-type]
    bind_call(record)
    return record


async def test_a_stream_returns_the_callers_request_id_in_its_trailers() -> None:
    """No headers of ours ahead of the first chunk: grpcio would send them in a write of their own."""
    ctx = RecordingContext(sse=False, metadata=((REQUEST_ID_KEY, "req-42"),))
    record = _record(ctx)
    relayed = status.stream(ctx, chunks(None), lambda e: "error", ctx.sse)  # type: ignore[arg-type]
    assert await anext(relayed) == "chunk0"
    assert ctx.initial == [] and ctx.trailing == ()
    out = [c async for c in relayed]
    assert out == ["chunk1", "chunk2"]
    assert ctx.initial == [] and ctx.trailing == ((REQUEST_ID_KEY, "req-42"),)
    assert record.code is grpc.StatusCode.OK and not record.id_sent


async def test_a_gateway_stream_sends_no_headers_of_its_own() -> None:
    """The gateway returns the id to REST callers; metadata of ours would leave in a write ahead of the first chunk,
    and a server dying between the two would leave a REST caller a 200 that Envoy can no longer retry."""
    ctx = RecordingContext(sse=True, metadata=((REQUEST_ID_KEY, "req-44"),))
    record = _record(ctx)
    out = [c async for c in status.stream(ctx, chunks(None), lambda e: "error", ctx.sse)]  # type: ignore[arg-type]
    assert out == ["chunk0", "chunk1", "chunk2"]
    assert ctx.initial == [] and ctx.trailing == () and record.code is grpc.StatusCode.OK


async def test_a_stream_failing_before_its_first_chunk_returns_the_id_in_the_trailers() -> None:
    ctx = RecordingContext(sse=False, metadata=((REQUEST_ID_KEY, "req-43"),))
    record = _record(ctx)
    with pytest.raises(_Aborted):
        async for _ in status.stream(ctx, chunks(0), lambda e: "error", ctx.sse):  # type: ignore[arg-type]
            pass
    assert record.code is grpc.StatusCode.UNAVAILABLE and ctx.initial == []
    trailing = dict(ctx.trailing)
    assert trailing[REQUEST_ID_KEY] == "req-43" and status.ERROR_METADATA_KEY in trailing


async def test_a_grpc_stream_failing_mid_way_returns_the_id_with_the_error_in_its_trailers() -> None:
    ctx = RecordingContext(sse=False, metadata=((REQUEST_ID_KEY, "req-45"),))
    record = _record(ctx)
    out = []
    with pytest.raises(_Aborted):
        async for c in status.stream(ctx, chunks(2), lambda e: "error", ctx.sse):  # type: ignore[arg-type]
            out.append(c)
    assert out == ["chunk0", "chunk1"] and record.code is grpc.StatusCode.UNAVAILABLE
    trailing = dict(ctx.trailing)
    assert trailing[REQUEST_ID_KEY] == "req-45" and status.ERROR_METADATA_KEY in trailing


async def test_an_sse_error_after_the_first_chunk_is_recorded_with_its_code() -> None:
    ctx = RecordingContext(sse=True)
    record = _record(ctx)
    out = [c async for c in status.stream(ctx, chunks(2), lambda e: "error", ctx.sse)]  # type: ignore[arg-type]
    assert out == ["chunk0", "chunk1", "error"]
    assert record.code is grpc.StatusCode.UNAVAILABLE and ctx.initial == []


@pytest.mark.parametrize(
    ("remaining", "code"), [(None, grpc.StatusCode.CANCELLED), (0.0, grpc.StatusCode.DEADLINE_EXCEEDED)]
)
async def test_a_stream_closed_under_us_is_cancelled_or_past_its_deadline(
    remaining: float | None, code: grpc.StatusCode
) -> None:
    ctx = RecordingContext(sse=False)
    record = _record(ctx)
    relayed = status.stream(ctx, chunks(None), lambda e: "error", ctx.sse)  # type: ignore[arg-type]
    assert await anext(relayed) == "chunk0"
    ctx._time_remaining = remaining  # gRPC cancels a call whose deadline passed, as one whose caller left
    await relayed.aclose()
    assert record.code is code


async def test_a_unary_call_returns_the_request_id_in_its_headers_or_its_trailers() -> None:
    ctx = RecordingContext(sse=False, metadata=((REQUEST_ID_KEY, "req-44"),))
    record = _record(ctx)

    async def ok() -> str:
        return "reply"

    assert await status.unary(ctx, ok()) == "reply"  # type: ignore[arg-type]
    assert ctx.initial == [((REQUEST_ID_KEY, "req-44"),)] and record.code is grpc.StatusCode.OK

    async def bad() -> str:
        raise ApiError(Failure.MODEL_NOT_FOUND, "no such model", "model")

    ctx, record = RecordingContext(sse=False), _record(RecordingContext(sse=False))
    with pytest.raises(_Aborted):
        await status.unary(ctx, bad())  # type: ignore[arg-type]
    assert record.code is grpc.StatusCode.NOT_FOUND and ctx.initial == []
    trailers = dict(ctx.trailing)
    assert trailers[REQUEST_ID_KEY] == record.request_id
    details = status_pb2.Status.FromString(trailers[status.STATUS_DETAILS_KEY])
    assert (details.code, details.message) == (grpc.StatusCode.NOT_FOUND.value[0], "no such model")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("", False), ("bad\nid", False), ("é", False)],
)
def test_request_ids_are_the_callers_when_sane(sent: str, kept: bool) -> None:
    got = request_id_from(RecordingContext(sse=False, metadata=((REQUEST_ID_KEY, sent),)))  # type: ignore[arg-type]
    if kept:
        assert got == sent
    else:
        assert got != sent and len(got) == 32 and int(got, 16) >= 0
    fresh = {request_id_from(RecordingContext(sse=False)) for _ in range(3)}  # type: ignore[arg-type]
    assert len(fresh) == 3
