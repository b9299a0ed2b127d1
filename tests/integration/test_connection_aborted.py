"""`participant_connection_aborted`: a participant whose signal connection joined but whose media never
connected leaves with this webhook instead of `participant_left`, as LiveKit sends it. The official Python
rtc SDK joins a server that offers only an address it cannot use (as behind a firewall, or with a wrong
public address): ICE never completes, and the SDK gives up that attempt and tries again."""

import asyncio
import contextlib
from pathlib import Path

from livekit import rtc
from livekit.protocol import models

from tests.agent_workers import eventually
from tests.conftest import start_server, stop_server
from tests.integration.test_webhooks import FAST_RETRIES, Receiver, unique

UNUSABLE_ADDRESS = "192.0.2.1"  # TEST-NET-1: never an address of this machine, so no candidate is offered
SDK_ATTEMPT = 30.0  # the SDK gives up one attempt to connect its media after about 15 s


async def test_a_participant_whose_media_never_connects_is_an_aborted_connection(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    config = {
        "webhook": {"api_key": "testkey", "urls": [receiver.url], **FAST_RETRIES},
        "rtc": {"ice_addresses": [UNUSABLE_ADDRESS]},
    }
    server = start_server(tmp_path / "server", config)
    room, bob = unique("aborted"), rtc.Room()
    connecting = asyncio.create_task(bob.connect(server.ws_url, server.join_token(room, "bob")))
    try:
        events = await eventually(
            lambda: receiver.of_room(server, room),
            "the first attempt's connection aborted",
            SDK_ATTEMPT,
            accept=lambda found: any(e.event == "participant_connection_aborted" for e in found),
        )
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        await bob.disconnect()
        stop_server(server)
        await receiver.stop()
    names = [e.event for e in events]
    assert names[:3] == ["room_started", "participant_joined", "participant_connection_aborted"]
    assert "participant_left" not in names
    joined, aborted = events[1], events[2]
    assert aborted.participant.identity == "bob" and aborted.participant.sid == joined.participant.sid
    assert aborted.participant.state == models.ParticipantInfo.DISCONNECTED
