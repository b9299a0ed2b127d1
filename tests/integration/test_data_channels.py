"""The server's data channels to a participant, as its DEBUG log shows them: enough to follow one
participant's SCTP association in aiortc's debug lines (docs/data-channels.md), with the Python SDK."""

import re
import uuid

from livekit import rtc

from tests.conftest import Server
from tests.polling import eventually


async def test_the_log_ties_a_participants_sctp_association_to_it(server: Server) -> None:
    """The TSN logged with the participant's identity is the one of the server's first DATA chunk on that
    association (the `_reliable` channel's open, stream 1: odd, as the DTLS server), and the SDK's SACK
    acknowledges it."""
    identity = f"py-{uuid.uuid4().hex[:8]}"
    room = rtc.Room()
    try:
        await room.connect(server.ws_url, server.join_token(f"data-{uuid.uuid4().hex[:8]}", identity))
        logged = await eventually(
            lambda: re.search(
                rf"subscriber data channels room=\S+ identity={identity} first_tsn=(\d+)", server.log()
            ),
            f"the first TSN of {identity}'s association in the log",
        )
        tsn = logged.group(1)

        def sent_and_acknowledged() -> bool:
            log = server.log()
            sent = f"> DataChunk(flags=3, tsn={tsn}, stream_id=1," in log
            return sent and re.search(rf"< SackChunk\(.*cumulative_tsn={tsn},", log) is not None

        await eventually(
            sent_and_acknowledged, f"the server's first DATA chunk to {identity} (TSN {tsn}) and its SACK"
        )
    finally:
        await room.disconnect()
