"""Start-up probes, in one place: a process that serves is only reported ready once each listener answers as a
caller would reach it (gRPC health, a TLS handshake, an HTTP status through Envoy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatgen.tls import handshake_ok, probe_context


def local(host: str) -> str:
    """Where a listener bound to `host` is reached from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def poll(ready: Callable[[], Awaitable[bool]], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not await ready():
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        await asyncio.sleep(0.1)


async def grpc_healthy(address: str, timeout: float = 60.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await poll(serving, timeout, f"gRPC server at {address} did not become healthy")


async def tls_listening(host: str, port: int, timeout: float = 60.0) -> None:
    # Health is SERVING in-process already; this checks the TLS port itself (see chatgen.tls on verification).
    await poll(
        lambda: handshake_ok(host, port), timeout, f"the gRPC TLS port {host}:{port} does not complete a handshake"
    )


async def http_get_status(port: int, path: str, host: str = "127.0.0.1", tls: bool = False) -> int | None:
    """Status code of an HTTP/1.1 GET, or None when nothing answers (no HTTP client dependency needed)."""
    host = local(host)
    context = None
    if tls:
        context = probe_context()
        context.set_alpn_protocols(["http/1.1"])
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout=1.0)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=2.0)
        return int(status_line.split(b" ")[1])
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return None
    finally:
        writer.close()
