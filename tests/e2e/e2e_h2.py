"""A raw HTTP/2 gRPC client (the `h2` package) for abuse tests: it sends what SDKs never do.

grpcio and the SDKs always send whole messages. The abuse tests need to announce a large message
and send part of it, keep many streams open at once on one connection, or open a connection and
send nothing. :class:`RawH2` drives one connection by hand: ``open`` sends a call's headers,
``send`` sends body bytes within the flow-control window, ``pump`` reads what the server sent
and records each stream's gRPC status (``"RST"`` for a reset stream).
"""

from __future__ import annotations

import select
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

WS = "/temporal.api.workflowservice.v1.WorkflowService"


def grpc_prefix(length: int, compressed: bool = False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, length)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def nested_groups(depth: int, number: int = 7) -> bytes:
    """`depth` START_GROUP tags, never closed."""
    return varint(number << 3 | 3) * depth


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RawH2:
    def __init__(self, address: str, source_ip: str | None = None, timeout: float = 10.0):
        host, port = address.rsplit(":", 1)
        self.authority = address
        self.sock = socket.create_connection(
            (host, int(port)), timeout=timeout, source_address=(source_ip, 0) if source_ip else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.status: dict[int, str] = {}
        self.message: dict[int, str] = {}
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, path: str, token: str | None, extra: list[tuple[str, str]] | None = None) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", self.authority),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        headers.extend(extra or [])
        self.conn.send_headers(stream, headers)
        self.flush()
        return stream

    def send(self, stream: int, data: bytes, end: bool = False) -> int:
        """Sends as much of `data` as the windows allow now; returns how much was sent."""
        if stream in self.status or self.closed:
            return 0
        try:
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return 0
        chunk = data[:window]
        if not chunk and data:
            return 0
        try:
            self.conn.send_data(stream, chunk, end_stream=end and len(chunk) == len(data))
            self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, OSError):
            return 0
        return len(chunk)

    def call(self, path: str, token: str | None, body: bytes, timeout: float = 10.0,
             extra: list[tuple[str, str]] | None = None) -> tuple[str, str]:  # fmt: skip
        """One whole unary call; returns (grpc-status, grpc-message)."""
        stream = self.open(path, token, extra)
        sent = 0
        deadline = time.monotonic() + timeout
        while sent < len(body) and time.monotonic() < deadline and stream not in self.status:
            sent += self.send(stream, body[sent:], end=True)
            self.pump(0.05)
        if not body:
            self.conn.end_stream(stream)
            self.flush()
        while stream not in self.status and time.monotonic() < deadline and not self.closed:
            self.pump(0.1)
        return self.status.get(stream, "TIMEOUT"), self.message.get(stream, "")

    def pump(self, timeout: float) -> None:
        """Reads and handles whatever the server sent within `timeout`."""
        if self.closed:
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, TimeoutError, OSError):
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers = dict(event.headers)
                if "grpc-status" in headers:
                    self.status[event.stream_id] = headers["grpc-status"]
                    self.message[event.stream_id] = headers.get("grpc-message", "")
            elif isinstance(event, h2.events.StreamReset):
                self.status.setdefault(event.stream_id, "RST")
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        try:
            self.flush()
        except OSError:
            self.closed = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
