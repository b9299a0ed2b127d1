"""Rooms across networks, with the official clients: the UDP port range of the server's ICE candidates,
the address it advertises in them (`rtc.node_ip`), and TURN (a real coturn started here) for clients
forced to relay, over UDP and over TCP.
"""

import contextlib
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from tests.conftest import Server, start_server, stop_server
from tests.integration.test_rtc_python import Client

# A refused join must be told, not left to the client's ICE timeout (15 s in the SDKs).
REFUSAL_BOUND = 5.0


def free_udp_range(size: int) -> int:
    """The first of `size` consecutive UDP ports free on 127.0.0.1, below Linux's ephemeral range
    (32768+) so that no other socket is given one of them by chance."""
    for _ in range(200):
        start = random.randrange(20000, 32000 - size)
        socks = []
        try:
            for port in range(start, start + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} consecutive free UDP ports")


@contextlib.contextmanager
def switchboard(tmp_path: Path, rtc_config: dict[str, Any]) -> Iterator[Server]:
    server = start_server(tmp_path / "server", {"rtc": {"ice_addresses": ["127.0.0.1"], **rtc_config}})
    try:
        yield server
    finally:
        stop_server(server)


async def join(server: Server, room: str, identity: str, options: rtc.RoomOptions | None = None) -> Client:
    client = Client(identity)
    await client.room.connect(server.ws_url, server.join_token(room, identity), options or rtc.RoomOptions())
    return client


async def test_a_full_port_range_refuses_the_join_at_once(tmp_path: Path) -> None:
    """One port: the first participant takes it; the next is refused with a reason, quickly; once the
    first leaves, its port serves the next join."""
    port = free_udp_range(1)
    room = f"ports-{uuid.uuid4().hex[:8]}"
    with switchboard(tmp_path, {"port_range_start": port, "port_range_end": port}) as server:
        first = await join(server, room, "first")
        try:
            started = time.monotonic()
            with pytest.raises(rtc.ConnectError) as refused:
                await join(server, room, "second")
            elapsed = time.monotonic() - started
        finally:
            await first.close()
        third = await join(server, room, "third")
        await third.close()
        log = server.log()
    print(f"\nrefused after {elapsed:.2f}s: {refused.value}")
    assert elapsed < REFUSAL_BOUND, f"the refusal took {elapsed:.1f}s"
    assert f"every UDP port of rtc.port_range_start-end ({port}-{port}) is taken" in str(refused.value)
    assert "Traceback" not in log, log
