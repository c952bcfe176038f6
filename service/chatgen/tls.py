"""Optional TLS: one certificate and key for the gRPC port and the REST listener (Envoy).

The Envoy -> gRPC hop is TLS too when the gRPC port is, but Envoy does not verify the server's certificate: both
run in one pod (or on one host) and reach each other over loopback, and a certificate issued for the public
name would not match 127.0.0.1 anyway. The process's own readiness probes likewise only check that the port
completes a TLS handshake; whether the certificate is right for clients is the clients' check.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())])


def tls_files(cert: str | None, key: str | None) -> TlsFiles | None:
    """The TLS files from --tls-cert/--tls-key, checked now so a typo fails at start-up, not at first request."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    files = TlsFiles(Path(cert).resolve(), Path(key).resolve())
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"cannot use --tls-cert {cert} with --tls-key {key}: {exc}") from None
    return files


def probe_context() -> ssl.SSLContext:
    """A client context for this process's own probes of its own ports: encrypts, verifies nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def handshake_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=probe_context()), timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
