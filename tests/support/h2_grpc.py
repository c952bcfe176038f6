"""A gRPC call over a bare HTTP/2 connection (the `h2` state machine on a socket), for what grpc's own client
hides from its application: the `endpoint-load-metrics-bin` trailer, which grpc consumes as load-balancing data
(as Envoy, a raw reader of the same bytes, does not)."""

from __future__ import annotations

import base64
import socket
import struct
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events


@dataclass
class RawReply:
    headers: dict[str, bytes]
    messages: list[bytes]
    trailers: dict[str, bytes]

    def binary(self, key: str) -> bytes:
        """A `-bin` value from the trailers, else the headers, decoded (gRPC sends it unpadded base64)."""
        value = self.trailers.get(key, self.headers.get(key))
        assert value is not None, (key, self.headers, self.trailers)
        return base64.b64decode(value + b"=" * (-len(value) % 4))


def call(address: str, method: str, request: bytes, timeout: float = 60.0) -> RawReply:
    """One call of `method` (/package.Service/Method) with one serialized request message."""
    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    reply = RawReply({}, [], {})
    body = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        conn.initiate_connection()
        headers = [
            (":method", "POST"), (":path", method), (":scheme", "http"), (":authority", address),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ]  # fmt: skip
        conn.send_headers(1, headers)
        conn.send_data(1, struct.pack(">BI", 0, len(request)) + request, end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    reply.headers = {k.decode(): v for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    reply.trailers = {k.decode(): v for k, v in event.headers}
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    while body:
        (length,) = struct.unpack(">I", body[1:5])
        reply.messages.append(body[5 : 5 + length])
        body = body[5 + length :]
    return reply
