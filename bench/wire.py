"""The load generator's own connections, spoken on asyncio transports: one keep-alive HTTP/1.1 connection per
Twirp caller, and the client side of RFC 6455 for each worker's `/agent` WebSocket.

Why not aiohttp's client: on this 2-core machine the load generator shares the cores with the servers it
measures, so what it spends per dispatch is taken from them. aiohttp (one task woken per message, a
coroutine per send) cost about 0.25 ms of CPU per dispatch (one Twirp call in and out, two worker messages
in and three out), a quarter of what a node spends; with callbacks on the transport and the worker's two
job updates written at once it is a fraction of that. What goes on the wire is the same: the servers parse
exactly what they parse from aiohttp.

Only what the servers send is handled: unfragmented frames (Switchboard's aiohttp server never
fragments) and HTTP responses with a Content-Length. Anything else is a protocol error, raised.
"""

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import uuid
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

from common import REQUEST_ID_HEADER, Call

MAX_HEAD = 16 * 1024
TIMEOUT = 30.0  # a connection, an upgrade or a response not there by then fails with TimeoutError
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = struct.pack("!H", 1000)
# The mask key must be unpredictable so that a proxy cannot be poisoned; on loopback there is none, and a
# zero key leaves the payload as it is (the server unmasks it all the same), so frames are built once.
ZERO_MASK = b"\0\0\0\0"


class ProtocolError(OSError):
    """The server sent what this client does not speak (an OSError, as a connection failure is to the
    callers: their request failed)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + ZERO_MASK + payload


def request_bytes(call: Call, host: str, path: str) -> bytes:
    """The HTTP/1.1 request for `call` (a Twirp call gets a fresh request id, as the SDKs send)."""
    headers = {**call.headers, REQUEST_ID_HEADER: str(uuid.uuid4())} if call.twirp else call.headers
    body = call.body or b""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"{call.method} {path} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


def upgrade_request(url: str, key: bytes, headers: Mapping[str, str]) -> bytes:
    """The HTTP/1.1 request that opens a WebSocket to `url` with `key` (Sec-WebSocket-Key)."""
    parts = urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n{lines}\r\n"
    ).encode("latin-1")


def accept_value(key: bytes) -> str:
    """The Sec-WebSocket-Accept a server answers `key` with."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()


def split_head(buffer: bytearray) -> bytes | None:
    """The head of an HTTP message at the start of `buffer`, removed from it; None until it is whole."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise ProtocolError(f"no end of the HTTP head in {MAX_HEAD} bytes")
        return None
    head = bytes(buffer[:end])
    del buffer[: end + 4]
    return head


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and the headers (names in lower case) of a response head."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {status_line!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Connection(asyncio.Protocol):
    """What both connections share: a buffer, the transport, and a failure that ends the connection."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: ProtocolError | None = None

    @property
    def closed(self) -> bool:
        """Gone, or going: nothing more can be sent on it."""
        return self.lost.done() or self.transport is None or self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.ended(exc or self.failure or ConnectionResetError("the server closed the connection"))

    def ended(self, exc: Exception) -> None:
        """The connection is gone, by `exc`."""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self.consume()
        except ProtocolError as exc:
            self.failure = exc  # connection_lost, which the abort calls, tells of it
            assert self.transport is not None
            self.transport.abort()

    def consume(self) -> None:
        raise NotImplementedError


class HttpConnection(Connection):
    """One keep-alive HTTP/1.1 connection to a server, one request at a time."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.response: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.body_size: int | None = None
        self.reusable = True
        """False once the server said it closes the connection after its response."""

    def ended(self, exc: Exception) -> None:
        if self.response is not None and not self.response.done():
            self.response.set_exception(exc)

    async def request(self, call: Call, path: str) -> tuple[int, bytes]:
        self.response = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request_bytes(call, self.host, path))
        return await asyncio.wait_for(self.response, TIMEOUT)

    def consume(self) -> None:
        if self.body_size is None:
            head = split_head(self.buffer)
            if head is None:
                return
            self.status, headers = parse_head(head)
            if not headers.get("content-length", "").isdigit():
                raise ProtocolError(f"a response without a valid Content-Length: {headers}")
            self.body_size = int(headers["content-length"])
            self.reusable = headers.get("connection", "").lower() != "close"
        if len(self.buffer) < self.body_size:
            return
        body = bytes(self.buffer[: self.body_size])
        del self.buffer[: self.body_size]
        self.body_size = None
        if self.response is None or self.response.done():
            raise ProtocolError(f"a response nobody asked for: HTTP {self.status}")
        self.response.set_result((self.status, body))


class TwirpCaller:
    """A caller's calls to one server, on one keep-alive connection (opened again when it is lost)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.address = (parts.hostname, parts.port)
        self.connection: HttpConnection | None = None

    async def send(self, call: Call) -> tuple[int, bytes]:
        if self.connection is None or self.connection.closed or not self.connection.reusable:
            self.close()
            connecting = asyncio.get_running_loop().create_connection(
                lambda: HttpConnection(f"{self.address[0]}:{self.address[1]}"), *self.address
            )
            _, self.connection = await asyncio.wait_for(connecting, TIMEOUT)
        return await self.connection.request(call, urlsplit(call.url).path)

    def close(self) -> None:
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.close()


class WebSocket(Connection):
    """The client side of one WebSocket: binary messages go to `on_message`, pings are answered."""

    def __init__(self, key: bytes, on_message: Callable[[bytes], None]) -> None:
        super().__init__()
        self.key = key
        self.on_message = on_message
        self.on_lost: Callable[[Exception], None] = lambda _exc: None
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False

    @classmethod
    async def connect(
        cls, url: str, headers: Mapping[str, str], on_message: Callable[[bytes], None]
    ) -> "WebSocket":
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        key = base64.b64encode(os.urandom(16))
        connecting = asyncio.get_running_loop().create_connection(
            lambda: cls(key, on_message), parts.hostname, parts.port
        )
        _, websocket = await asyncio.wait_for(connecting, TIMEOUT)
        assert websocket.transport is not None
        websocket.transport.write(upgrade_request(url, key, headers))
        try:
            await asyncio.wait_for(websocket.open, TIMEOUT)
        except BaseException:
            websocket.transport.abort()
            raise
        return websocket

    def send(self, *payloads: bytes) -> None:
        """Binary messages, written at once (none once this side began to close)."""
        if not self.closed and not self.closing:
            assert self.transport is not None
            self.transport.write(b"".join(client_frame(OP_BINARY, payload) for payload in payloads))

    async def close(self, patience: float) -> None:
        """A close handshake, then the connection closed (at once if the server does not answer within
        `patience` seconds)."""
        self.closing = True
        assert self.transport is not None
        if not self.closed:
            self.transport.write(client_frame(OP_CLOSE, CLOSE_NORMAL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), patience)
        self.transport.abort()

    def ended(self, exc: Exception) -> None:
        if not self.open.done():
            self.open.set_exception(exc)
        elif not self.closing:
            self.on_lost(exc)

    def consume(self) -> None:
        if not self.open.done():
            head = split_head(self.buffer)
            if head is None:
                return
            self.accept(head)
        buffer, at = self.buffer, 0
        while len(buffer) - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            size, start = second & 0x7F, at + 2
            if second & 0x80:
                raise ProtocolError("a masked frame from the server")
            if size == 126:
                if len(buffer) - start < 2:
                    break
                size, start = int.from_bytes(buffer[start : start + 2]), start + 2
            elif size == 127:
                if len(buffer) - start < 8:
                    break
                size, start = int.from_bytes(buffer[start : start + 8]), start + 8
            if len(buffer) - start < size:
                break
            payload, at = bytes(buffer[start : start + size]), start + size
            self.frame(first, payload)
        del buffer[:at]

    def accept(self, head: bytes) -> None:
        status, headers = parse_head(head)
        if status != 101 or headers.get("sec-websocket-accept") != accept_value(self.key):
            raise ProtocolError(f"WebSocket upgrade refused: HTTP {status}")
        self.open.set_result(None)

    def frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if not first & 0x80 or opcode == 0:
            raise ProtocolError("a fragmented message")
        if opcode == OP_BINARY:
            self.on_message(payload)
        elif opcode == OP_PING:
            assert self.transport is not None
            self.transport.write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            assert self.transport is not None
            if not self.closing:
                self.closing = True
                self.on_lost(ConnectionResetError(f"the server closed the WebSocket: {payload[:2].hex()}"))
                self.transport.write(client_frame(OP_CLOSE, payload[:2]))
            self.transport.close()
        elif opcode != OP_PONG:
            raise ProtocolError(f"an unexpected frame, opcode {opcode}")
