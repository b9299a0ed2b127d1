"""Posting webhook events: one kept-alive HTTP/1.1 connection per URL, one request at a time.

A URL's events go out one by one, in order (`webhooks.UrlSender`), so a connection never carries two
requests at once and needs none of a general client's pooling, redirects, cookies or tracing. Profiled
under bench/dispatch.py, aiohttp's client spent about 140 us of the server's core on each post, more than
the rest of an event's delivery together; this writes the request in one piece and reads only the status
line and the headers that say where the response ends, for about a third of that.

A response with a Content-Length leaves the connection open for the next event; any other (chunked, or
delimited by the connection's end) and `Connection: close` end it, since the body is not wanted; the next
post connects again. A request on a reused connection that the receiver had closed meanwhile is sent once
more on a fresh one (it cannot have been seen: nothing of an answer came back).
"""

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
"""The most of a response's status line and headers read before the response is refused."""


class ResponseError(OSError):
    """The receiver's answer was not an HTTP/1.x response that could be read."""


class _Exchange(asyncio.Protocol):
    """One connection: sends a request, resolves its future with the response's status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.closed = False
        self._buffer = b""
        self._answer: asyncio.Future[int] | None = None
        self._status = 0
        self._body_left = -1  # bytes of the current response's body still to come, -1 before its head
        self.heard = False
        """Whether any of an answer to the current request came back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, but have its methods).
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._buffer, self._body_left, self.reusable, self.heard = b"", -1, False, False
        self.transport.write(request)
        return self._answer

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # nothing was asked: a confused receiver, not worth keeping
            self.close()
            return
        self.heard = True
        self._buffer += data
        try:
            self._read()
        except ResponseError as exc:
            self._finish(exc)

    def _read(self) -> None:
        while self._body_left < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ResponseError("response head too long")
                return
            head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
            self._head(head)
        if len(self._buffer) >= self._body_left:
            self._finish(None)

    def _head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ResponseError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        status = int(code)
        if 100 <= status < 200:  # informational: the real response follows
            return
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        length = fields.get("content-length")
        self._status = status
        if status in (204, 304):  # never a body, whatever the headers say
            length = "0"
        if length is not None and length.isdigit() and "transfer-encoding" not in fields:
            self._body_left = int(length)
            self.reusable = version == "HTTP/1.1" and fields.get("connection") != "close"
        else:
            self._body_left = 0  # the body ends with the connection, or is chunked: not read, not reused
            self.reusable = False

    def _finish(self, error: Exception | None) -> None:
        answer, self._answer = self._answer, None
        if not self.reusable and self.transport is not None:
            self.transport.close()
        if answer is not None and not answer.done():
            if error is None:
                answer.set_result(self._status)
            else:
                answer.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            lost = ConnectionResetError("the receiver closed the connection before answering")
            self._answer.set_exception(lost)
            self._answer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpPoster:
    """POSTs to one http(s) URL over one kept-alive connection; `post` returns the response's status and
    raises OSError (the connection failed or the answer was unreadable) or TimeoutError."""

    def __init__(self, url: str, timeout: float, *, user_agent: str = "switchboard") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http(s)://host...: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # without any user:password
        self._head = f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n".encode(
            "latin-1"
        )
        self._timeout = timeout
        self._connection: _Exchange | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join(
            (self._head, fields.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        async with asyncio.timeout(self._timeout):
            connection = self._connection
            if connection is not None and not connection.closed:
                try:
                    return await self._exchange(connection, request)
                except ConnectionResetError:
                    if connection.heard:
                        raise
                    # The receiver closed the idle connection as the request went: it saw nothing of it.
            return await self._exchange(await self._connect(), request)

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Exchange,
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl else None,
        )
        self._connection = connection
        return connection

    async def _exchange(self, connection: _Exchange, request: bytes) -> int:
        try:
            return await connection.send(request)
        except BaseException:
            connection.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
