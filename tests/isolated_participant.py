"""A Python rtc SDK participant in a process of its own, so that it can run where the test process is not
(in another network namespace: `ip netns exec NS python -m tests.isolated_participant`).

Environment: SWITCHBOARD_WS_URL, PARTICIPANT_TOKEN, PEER_IDENTITY, HEAR_TIMEOUT (seconds). It joins,
publishes a 440 Hz tone, waits to hear PEER_IDENTITY's audio, prints one JSON line (what it heard, its
selected candidate pairs), then stays in the room until its stdin closes.
"""

import asyncio
import json
import os
import sys
import time
from typing import Any

from livekit import rtc

from tests.integration.test_rtc_python import Client

LOUD_RMS = 1000.0
ENOUGH_FRAMES = 100


async def selected_pairs(room: rtc.Room) -> list[dict[str, dict[str, Any]]]:
    """Each connected peer connection's selected pair (publisher's first): per side, the candidate's type
    (e.g. 'RELAY'), address and port, and for a local relay candidate the address the TURN server saw
    it from (`related`) and how it reaches that server (`relayProtocol`)."""
    stats = await room.get_rtc_stats()
    pairs = []
    for report in (stats.publisher_stats, stats.subscriber_stats):
        by_id = {getattr(s, s.WhichOneof("stats")).rtc.id: s for s in report if s.WhichOneof("stats")}
        for s in report:
            if s.WhichOneof("stats") == "transport" and s.transport.transport.selected_candidate_pair_id:
                pair = by_id[s.transport.transport.selected_candidate_pair_id].candidate_pair.candidate_pair
                local = by_id[pair.local_candidate_id].local_candidate.candidate
                remote = by_id[pair.remote_candidate_id].remote_candidate.candidate
                pairs.append({"local": _candidate(local), "remote": _candidate(remote)})
    return pairs


def _candidate(candidate: Any) -> dict[str, Any]:
    described = {
        "type": rtc.stats.IceCandidateType.Name(candidate.candidate_type),
        "address": candidate.address,
        "port": candidate.port,
    }
    if described["type"] == "RELAY":
        described["related"] = candidate.related_address
        described["relayProtocol"] = rtc.stats.IceServerTransportProtocol.Name(candidate.relay_protocol)
    return described


async def selected_local_candidates(room: rtc.Room) -> list[str]:
    """The type of the local candidate of each peer connection's selected pair, e.g. ['RELAY', 'RELAY']."""
    return [pair["local"]["type"] for pair in await selected_pairs(room)]


async def main() -> None:
    client = Client("isolated")
    await client.room.connect(os.environ["SWITCHBOARD_WS_URL"], os.environ["PARTICIPANT_TOKEN"])
    await client.publish_tone()
    deadline = time.monotonic() + float(os.environ.get("HEAR_TIMEOUT", "20"))
    loud = 0
    while loud < ENOUGH_FRAMES and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        loud = sum(1 for level in client.levels if level > LOUD_RMS)
    pairs = await selected_pairs(client.room)
    report = {"loudFrames": loud, "selected": [pair["local"]["type"] for pair in pairs], "pairs": pairs}
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
