"""ChatgenError -> gRPC status, plus the OpenAI error JSON in trailing metadata for the REST gateway.

Envoy's transcoder turns the gRPC status into the HTTP status; its own error body is not OpenAI-shaped, so the
gateway's Lua filter replaces it with the JSON carried in `x-chatgen-error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import grpc

from chatgen.errors import ChatgenError, Failure
from chatgen.transport.calls import CallRecord

log = logging.getLogger(__name__)

ERROR_METADATA_KEY = "x-chatgen-error"

T = TypeVar("T")
_MAX_MESSAGE = 2000
# How long before the gRPC deadline an SSE stream stops itself to send its error event.
_SSE_DEADLINE_MARGIN = 0.05


def as_chatgen_error(exc: Exception) -> ChatgenError:
    if isinstance(exc, ChatgenError):
        return exc
    log.exception("unexpected error while serving a request")
    return ChatgenError(Failure.INTERNAL, f"internal error: {type(exc).__name__}")


async def abort(context: grpc.aio.ServicerContext, err: ChatgenError, extra: tuple[tuple[str, str], ...] = ()) -> None:
    if len(err.message) > _MAX_MESSAGE:
        err = ChatgenError(err.failure, err.message[:_MAX_MESSAGE] + "...", err.param)
    metadata = [(ERROR_METADATA_KEY, err.openai_json()), *extra]
    if err.retry_after is not None:
        # `retry-after` becomes the REST response's Retry-After header; grpc-retry-pushback-ms is what gRPC
        # clients' retry policies honour.
        metadata += [("retry-after", str(err.retry_after)), ("grpc-retry-pushback-ms", str(err.retry_after * 1000))]
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(err.wire.grpc_code, err.message)


def _ended_early(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a call cancelled under us: gRPC's own deadline, or the caller going away."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


async def _failed(context: grpc.aio.ServicerContext, err: ChatgenError, record: CallRecord | None) -> None:
    if record is None:
        await abort(context, err)
        return
    record.code = err.wire.grpc_code
    await abort(context, err, () if record.id_sent else record.metadata)


async def unary(
    context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]], record: CallRecord | None = None
) -> T:
    """Run `call`; a failure aborts the call with its status. With a record: its status, and the request id in
    the response headers (or the trailers of a failure)."""
    try:
        result = await call()
    except asyncio.CancelledError:
        if record is not None:
            record.code = _ended_early(context)
        raise
    except Exception as exc:
        await _failed(context, as_chatgen_error(exc), record)
        raise  # unreachable: abort raises
    if record is not None:
        await context.send_initial_metadata(record.metadata)
        record.id_sent = True
    return result


async def stream(
    context: grpc.aio.ServicerContext,
    chunks: AsyncGenerator[T, None],
    error_chunk: Callable[[ChatgenError], T],
    sse: bool,
    record: CallRecord | None = None,
) -> AsyncGenerator[T, None]:
    """Relay `chunks`; on failure abort the call, or for an SSE stream (the gateway's, whose HTTP status and
    headers went out with the first chunk) already under way, end with an error chunk. Cancellation (a client
    that went away) is not caught: it closes `chunks`, which aborts the engine. With a record: its status, and
    for gRPC callers the request id in the trailers."""
    # gRPC ends a call whose deadline passed with DEADLINE_EXCEEDED, which a gRPC caller reads from the status.
    # An SSE caller has had its HTTP 200 by then; for it the stream stops just before the deadline with an error
    # event, so it learns why the stream ended.
    remaining = context.time_remaining() if sse else None
    stop_at = asyncio.get_running_loop().time() + max(remaining - _SSE_DEADLINE_MARGIN, 0.0) if remaining else None
    # No metadata of ours goes out ahead of the first chunk: grpcio's asyncio server can only send it in a write of
    # its own (a syscall and a completion more per stream, 3 % of the serving process's samples under load), and
    # a server that dies between the two leaves the caller headers and no chunk, which Envoy can no longer retry.
    # gRPC callers get the request id in the trailers; the gateway returns it to REST callers itself.
    started = False
    try:
        async with contextlib.aclosing(chunks):
            if stop_at is None:
                # The per-token path: no timer to arm and disarm around every chunk.
                async for chunk in chunks:
                    started = True
                    yield chunk
            while stop_at is not None:
                try:
                    async with asyncio.timeout_at(stop_at):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ChatgenError(
                        Failure.DEADLINE_EXCEEDED, "The request's timeout passed before it finished"
                    ) from None
                started = True
                yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        if record is not None:
            record.code = _ended_early(context)
        raise
    except Exception as exc:
        err = as_chatgen_error(exc)
        if not (started and sse):
            await _failed(context, err, record)
        elif record is not None:
            record.code = err.wire.grpc_code
        yield error_chunk(err)
    else:
        if record is not None and not sse:
            context.set_trailing_metadata(record.metadata)
