"""Protobuf messages over a WebSocket: sent in the order they were decided, as binary or protojson text.

Text frames are read as every JSON body is (switchboard.protojson): unknown fields pass, unknown enum
values are refused. Binary frames are read as LiveKit reads them, with open enums: a value newer than
livekit-protocol (a newer SDK's DisconnectReason, say) passes through, and the handler that acts on a
value checks it.
"""

import asyncio
import contextlib
import struct
from collections import deque
from typing import TypeVar

from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from switchboard.core.errors import InvalidArgument
from switchboard.protojson import from_json

M = TypeVar("M", bound=Message)


class MalformedMessage(Exception):
    """A frame that is not a message of the expected type; the text says why."""


class ConnectionLost(Exception):
    """The peer stopped answering heartbeats, or the connection broke: not the peer's protocol error."""


class MessageSender:
    """Queue messages from synchronous code; one writer task at a time drains them in order.

    LiveKit peers may speak protojson text instead of binary protobuf: after a text frame the server
    answers in text until a binary frame switches it back (`text` follows the last frame received).
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.text = False
        # Both made only while there is something to send: thousands of idle workers hold a sender each.
        self._outbox: deque[Message] | None = None
        self._writer: asyncio.Task[None] | None = None

    def send(self, message: Message) -> None:
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(message)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._outbox and not self.ws.closed:
                message = self._outbox.popleft()
                if self.text:
                    await self.ws.send_str(json_format.MessageToJson(message, indent=None))
                else:
                    await self.ws.send_bytes(message.SerializeToString())
        except (ConnectionError, RuntimeError):
            pass  # the connection is going away; its reader notices and cleans up
        finally:
            self._writer = None
            self._outbox = None

    async def flushed(self) -> None:
        """Wait until everything queued so far has been written."""
        while self._writer is not None:
            await asyncio.shield(self._writer)


async def receive(ws: web.WebSocketResponse, sender: MessageSender, message_type: type[M]) -> M | None:
    """The next message from the peer, or None once the connection is closed."""
    frame = await ws.receive()
    if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    if frame.type is WSMsgType.ERROR:
        error = ws.exception()
        if isinstance(error, TimeoutError | ConnectionError):
            raise ConnectionLost(str(error) or type(error).__name__)
        raise MalformedMessage(f"unreadable frame: {error}")
    message = message_type()
    try:
        if frame.type is WSMsgType.BINARY:
            sender.text = False
            message.ParseFromString(frame.data)
        elif frame.type is WSMsgType.TEXT:
            sender.text = True
            from_json(frame.data, message)
        else:
            raise MalformedMessage(f"unexpected frame type {frame.type.name}")
    except (DecodeError, json_format.ParseError, RecursionError) as exc:
        raise MalformedMessage(f"malformed {message_type.__name__}: {exc}") from exc
    except InvalidArgument as exc:
        raise MalformedMessage(f"invalid {message_type.__name__}: {exc}") from exc
    return message


MAX_CLOSE_REASON = 123
"""Bytes of reason a Close frame can carry (a control frame's 125, less the 2 of the code)."""


async def fail(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, code: int, reason: str
) -> None:
    """Fail the connection (RFC 6455, 7.1.7): send a Close frame with `code` and `reason`, then close the
    TCP connection at once, without waiting for the peer's Close.

    `ws.close()` waits for the peer's Close frame, reading and parsing every frame the peer sent before
    it. After a violation by a peer that floods the connection, that is the megabytes of frames waiting in
    the kernel's buffers, parsed on the event loop while every other client waits (bench/abuse.py: their
    p99 went from a few ms to 74-178 ms). Closed with them unread, the kernel throws them away (and
    answers the peer with a reset).
    """
    payload = struct.pack("!H", code) + reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_frame(payload, WSMsgType.CLOSE)
    if transport is not None:
        transport.close()  # what was written (the Close frame) is still sent first
