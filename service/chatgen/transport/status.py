"""ApiError -> gRPC status, in three forms: the status code and message; `google.rpc.Status` with
`ErrorInfo` (reason = the error code) and `BadRequest.FieldViolation` (field = `param`) in
`grpc-status-details-bin`, per AIP-193, for gRPC callers in any language; and the OpenAI error JSON in the
`x-chatgen-error` trailer, which the REST gateway's Lua filter puts in place of the transcoder's own error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from chatgen.errors import ApiError, Failure
from chatgen.transport.calls import current_call

log = logging.getLogger(__name__)

ERROR_METADATA_KEY = "x-chatgen-error"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# ErrorInfo.domain: who defines the reasons (AIP-193 wants the service's name).
ERROR_DOMAIN = "chatgen.v1"

T = TypeVar("T")
# An error message's UTF-8 bytes in the trailers: it travels three times (grpc-message, percent-encoded; the
# OpenAI JSON, \u-escaped; google.rpc.Status, twice, base64), which must stay under the 8 KiB of metadata a
# default gRPC client takes without refusing some calls. Client values in messages are short already
# (errors.shown); this bounds the rest.
_MAX_MESSAGE_BYTES = 600
# How long before the gRPC deadline a unary call or an SSE stream stops itself to send its own error.
_SSE_DEADLINE_MARGIN = 0.05


# How this call's errors look to its caller: OpenAI's error JSON, or Anthropic's for the Messages API (whose
# servicer says so for each of its calls; each RPC runs in a task, and so in a context, of its own).
_anthropic: contextvars.ContextVar[bool] = contextvars.ContextVar("chatgen_anthropic_errors", default=False)
ANTHROPIC_SERVICE = "/chatgen.v1.MessagesService/"


def speak_anthropic() -> None:
    """This call's errors are Anthropic's (`{"type": "error", "error": {...}}`)."""
    _anthropic.set(True)


def error_json(err: ApiError, anthropic: bool | None = None) -> str:
    """The error body a REST caller gets (the `x-chatgen-error` trailer): this call's API's shape, or the one
    `anthropic` names."""
    return err.anthropic_json() if (_anthropic.get() if anthropic is None else anthropic) else err.openai_json()


def as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    log.exception("unexpected error while serving a request")
    return ApiError(Failure.INTERNAL, f"internal error: {type(exc).__name__}")


def rpc_status(err: ApiError) -> status_pb2.Status:
    """The error as google.rpc.Status: ErrorInfo always, BadRequest when a field is at fault, RetryInfo on
    overload."""
    details = [error_details_pb2.ErrorInfo(reason=err.failure.value.upper(), domain=ERROR_DOMAIN)]
    if err.param is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=err.param, description=err.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.seconds = err.retry_after
        details.append(retry)
    status = status_pb2.Status(code=err.status.grpc_code.value[0], message=err.message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


async def abort(
    context: grpc.aio.ServicerContext,
    err: ApiError,
    extra: tuple[tuple[str, str | bytes], ...] = (),
    anthropic: bool | None = None,
) -> None:
    if len(err.message.encode()) > _MAX_MESSAGE_BYTES or (err.param is not None and len(err.param) > 200):
        message = err.message.encode()[:_MAX_MESSAGE_BYTES].decode(errors="ignore")
        err = ApiError(err.failure, message + "...", err.param and err.param[:200], err.retry_after)
    metadata: list[tuple[str, str | bytes]] = [
        (ERROR_METADATA_KEY, error_json(err, anthropic)),
        (STATUS_DETAILS_KEY, rpc_status(err).SerializeToString()),
        *extra,
    ]
    if err.retry_after is not None:
        # `retry-after` becomes the REST response's Retry-After header; grpc-retry-pushback-ms is what gRPC
        # clients' retry policies honour.
        metadata += [("retry-after", str(err.retry_after)), ("grpc-retry-pushback-ms", str(err.retry_after * 1000))]
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(err.status.grpc_code, err.message)


def _ended_early(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a call cancelled under us: gRPC's own deadline, or the caller going away."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


async def _failed(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    record = current_call()
    if record is None:
        await abort(context, err)
        return
    record.code = err.status.grpc_code
    await abort(context, err, () if record.id_sent else record.metadata)


async def unary(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """Await `call`; a failure aborts the RPC with its status. In a logged RPC: its status in the call record,
    and the request id in the response headers (or the trailers of a failure)."""
    record = current_call()
    # As a stream does for the gateway: the call stops just before its deadline with chatgen's own error (its
    # message and, over REST, its body), rather than leaving the ending to gRPC's bare DEADLINE_EXCEEDED.
    remaining = context.time_remaining()
    try:
        if remaining is None:
            result = await call
        else:
            result = await _before(call, asyncio.get_running_loop().time() + max(remaining - _SSE_DEADLINE_MARGIN, 0.0))
    except asyncio.CancelledError:
        if record is not None:
            record.code = _ended_early(context)
        raise
    except Exception as exc:
        await _failed(context, as_api_error(exc))
        raise  # unreachable: abort raises
    if record is not None:
        await context.send_initial_metadata(record.metadata)
        record.id_sent = True
    return result


class _WriteWatch:
    """Ends a call whose caller stopped reading: when one chunk has waited `limit` seconds for the transport to
    take it (the caller's flow-control window full), the call's task is cancelled, as when the caller goes away,
    which aborts its engine request and frees its slot. One timer per stream, not one per chunk; none for a
    limit of 0."""

    def __init__(self, context: grpc.aio.ServicerContext, limit: float) -> None:
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._limit = limit
        # When the chunk now being written was handed over (None: not writing).
        self.since: float | None = None
        self._timer = self._loop.call_later(limit, self._check) if limit > 0 else None

    def now(self) -> float:
        return self._loop.time()

    def _check(self) -> None:
        since = self.since
        if since is not None and self._loop.time() - since >= self._limit:
            log.warning("a caller read nothing for %.0f s: its stream is ended", self._limit)
            if self._task is not None:
                self._task.cancel()
            # The cancelled task sends nothing; this status goes after the chunks already queued for the caller.
            self._ending = asyncio.ensure_future(self._end())
            return
        wait = self._limit if since is None else self._limit - (self._loop.time() - since)
        self._timer = self._loop.call_later(max(wait, 0.01), self._check)

    async def _end(self) -> None:
        err = ApiError(Failure.DEADLINE_EXCEEDED, f"The caller read nothing for {self._limit:g} s; the stream ended")
        with contextlib.suppress(Exception):
            await abort(self._context, err)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def _before(call: Awaitable[T], stop_at: float) -> T:
    """`call`'s result, or chatgen's DEADLINE_EXCEEDED once the loop's clock reaches `stop_at`."""
    try:
        async with asyncio.timeout_at(stop_at):
            return await call
    except TimeoutError:
        raise ApiError(Failure.DEADLINE_EXCEEDED, "The request's timeout passed before it finished") from None


async def stream(
    context: grpc.aio.ServicerContext,
    chunks: AsyncGenerator[T, None],
    error_chunk: Callable[[ApiError], T],
    sse: bool,
    write_timeout: float = 0.0,
) -> AsyncGenerator[T, None]:
    """Relay `chunks`; on failure abort the call, or for an SSE stream (the gateway's, whose HTTP status and
    headers went out with the first chunk) already under way, end with an error chunk. Cancellation (a client
    that went away) is not caught: it closes `chunks`, which aborts the engine. In a logged RPC: its status, and
    for gRPC callers the request id in the trailers."""
    record = current_call()
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
    watch = _WriteWatch(context, write_timeout)
    try:
        async with contextlib.aclosing(chunks):
            if stop_at is None:
                # The per-token path: no timer armed and disarmed around every chunk, a clock read each side.
                async for chunk in chunks:
                    started, watch.since = True, watch.now()
                    yield chunk
                    watch.since = None
            while stop_at is not None:
                try:
                    chunk = await _before(anext(chunks), stop_at)
                except StopAsyncIteration:
                    break
                started, watch.since = True, watch.now()
                yield chunk
                watch.since = None
    except (asyncio.CancelledError, GeneratorExit):
        if record is not None:
            record.code = _ended_early(context)
        raise
    except Exception as exc:
        err = as_api_error(exc)
        if not (started and sse):
            await _failed(context, err)
        elif record is not None:
            record.code = err.status.grpc_code
        yield error_chunk(err)
    else:
        if record is not None:
            # gRPC callers get the request id (REST callers have it from the gateway); both, the server's load
            # (a balancer in between reads it).
            context.set_trailing_metadata(record.load_metadata if sse else record.metadata)
    finally:
        watch.close()
