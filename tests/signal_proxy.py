"""A TCP proxy that a test puts between a client SDK and the server, and cuts as a network blip would."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tests.conftest import Server, free_port


class SignalProxy:
    """A TCP proxy in front of the server. `cut()` drops every connection through it, as a network
    blip drops a client's signal connection; while `refusing`, new connections are closed at once; while
    `stalled` (`stall()` … `release()`), they are held, unanswered, as on a network still recovering;
    while replies are held (`hold_replies()` … `pass_replies()`), the server's WebSocket messages (after
    its upgrade response) wait in the proxy, as on a slow link, and the client's still go through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.refusing = False
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._replying = asyncio.Event()
        self._replying.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        await self._flowing.wait()
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer),
            self._replies(upstream_reader, client_writer),
            return_exceptions=True,
        )

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server's side: its HTTP response head goes through at once; after an upgrade, its messages
        wait while replies are held."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as closed:  # before its head ended: what came goes on
            head = closed.partial
        except (asyncio.LimitOverrunError, ConnectionError):  # no head to read: the pipe passes it all on
            head = b""
        writer.write(head)
        await self._pipe(reader, writer, self._replying if head.startswith(b"HTTP/1.1 101") else None)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None = None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    def stall(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def hold_replies(self) -> None:
        self._replying.clear()

    def pass_replies(self) -> None:
        self._replying.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # no close handshake: the connection is simply gone
        self._writers.clear()

    async def close(self) -> None:
        self.release()
        self.pass_replies()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @classmethod
    @contextlib.asynccontextmanager
    async def to(cls, server: Server) -> AsyncIterator["SignalProxy"]:
        """A proxy to `server`'s port, for as long as the context lasts."""
        proxy = cls(int(server.http_url.rsplit(":", 1)[1]))
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.close()


@dataclass(frozen=True)
class ThroughProxy:
    """The server as an agent worker reaches it through the proxy: /agent and its jobs' /rtc alike."""

    server: Server
    proxy: SignalProxy

    @property
    def http_url(self) -> str:
        return self.proxy.url.replace("ws://", "http://")

    @property
    def ws_url(self) -> str:
        return self.proxy.url

    @property
    def api_key(self) -> str:
        return self.server.api_key

    @property
    def api_secret(self) -> str:
        return self.server.api_secret
