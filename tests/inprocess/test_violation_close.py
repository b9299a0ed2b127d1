"""A worker that breaks the protocol, or a participant that floods `/rtc` with bad frames, is failed
(RFC 6455 7.1.7), not closed gracefully: the server sends its Close frame and drops the connection,
without waiting for the client's Close and without reading what the client sent meanwhile. A graceful
close reads, and parses on the event loop, every frame a flooding client queued up before its Close:
bench/abuse.py measured 58-105 ms stalls for everyone else.

The clients here are raw sockets that write WebSocket frames by hand: a WebSocket client library answers
the server's Close by itself, and these must not."""

import asyncio
import base64
import contextlib
import os
import struct
from urllib.parse import urlsplit

from livekit.protocol import agent, rtc

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from tests.inprocess.conftest import AppServer, StartApp
from tests.protocol_worker import DEADLINE, register_message, unique

POLICY_VIOLATION = 1008
VIOLATION_CLOSE_DELAY = 0.2
GARBAGE = b"\xff\xff\xff\xff\x0f"  # not a WorkerMessage
BINARY, CLOSE = 0x2, 0x8


def client_frame(payload: bytes, opcode: int = BINARY) -> bytes:
    """One masked frame, as a client must send it."""
    mask = os.urandom(4)
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the server (unmasked): its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def raw_websocket(
    server: AppServer, target: str, authorization: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upgraded connection to `target` (path and query), made by hand."""
    url = urlsplit(server.http_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {authorization}\r\n" if authorization else ""
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def flood(writer: asyncio.StreamWriter) -> int:
    """Write garbage frames until the server drops the connection: the bytes written."""
    batch = client_frame(GARBAGE) * 4096
    written = 0
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(batch)
            await writer.drain()
            written += len(batch)
    return written


async def test_a_flooding_worker_is_dropped_after_its_close_frame_without_waiting_for_its_close(
    start_app: StartApp,
) -> None:
    server = await start_app({"agents": {"violation_close_delay": VIOLATION_CLOSE_DELAY}})
    name = unique("flood")
    reader, writer = await raw_websocket(server, "/agent", server.token(agent=True))
    writer.write(client_frame(register_message(name).SerializeToString()))
    opcode, payload = await asyncio.wait_for(server_frame(reader), DEADLINE)
    assert opcode == BINARY
    worker_id = agent.ServerMessage.FromString(payload).register.worker_id
    assert server.workers_named(name) == [worker_id]

    flooding = asyncio.create_task(flood(writer))
    try:
        opcode, payload = await asyncio.wait_for(server_frame(reader), DEADLINE)
        assert opcode == CLOSE, (opcode, payload)
        code, reason = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        assert code == POLICY_VIOLATION and reason.startswith("malformed WorkerMessage"), (code, reason)
        # No Close is sent from here, and the flood goes on: the server drops the connection all the same
        # (a graceful close would wait up to 10 s for a Close, reading the flood meanwhile).
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        await asyncio.wait_for(flooding, DEADLINE)  # its writes fail once the server has gone
    finally:
        flooding.cancel()
        writer.close()
    assert server.workers_named(name) == [] and not server.hub.sessions


async def test_a_participant_flooding_bad_signal_frames_is_told_to_leave_then_dropped(
    start_app: StartApp,
) -> None:
    server = await start_app({"rtc": {"max_bad_frames": 5}})
    token = mint_token(
        server.api_key, server.api_secret, identity="flooder", video=VideoGrant(room_join=True, room="r")
    )
    reader, writer = await raw_websocket(server, f"/rtc?access_token={token}&auto_subscribe=1")
    opcode, payload = await asyncio.wait_for(server_frame(reader), DEADLINE)
    assert opcode == BINARY and rtc.SignalResponse.FromString(payload).WhichOneof("message") == "join"

    flooding = asyncio.create_task(flood(writer))
    try:
        told: list[str | None] = []
        while True:  # the server's own messages (the subscriber offer…), its leave, then its Close
            opcode, payload = await asyncio.wait_for(server_frame(reader), DEADLINE)
            if opcode != BINARY:
                break
            told.append(rtc.SignalResponse.FromString(payload).WhichOneof("message"))
        assert told[-1] == "leave", told
        code, reason = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        assert (opcode, code, reason) == (CLOSE, POLICY_VIOLATION, "too many bad signal frames")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        await asyncio.wait_for(flooding, DEADLINE)
    finally:
        flooding.cancel()
        writer.close()
