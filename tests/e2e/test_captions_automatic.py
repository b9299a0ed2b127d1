"""OpenVidu's automatic scenario, end to end: an agent whose live_captions service is `processing:
automatic` joins every new room with no dispatch call, transcribes each participant who speaks, later
arrivals included, and lets go of those who leave."""

import asyncio
from collections.abc import Iterator

import pytest
from livekit import api

from tests.agent_workers import eventually, registered
from tests.conftest import Server
from tests.e2e.captions import (
    Join,
    captioned,
    captions_agent,
    dispatches_of,
    new_room,
    serve_agents,
)
from tests.speech import Caption, Speaker

AGENT = "captions"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_agents(tmp_path_factory, {AGENT: captions_agent("automatic")})


async def test_the_agent_joins_a_new_room_without_any_dispatch_call(
    server: Server, lkapi: api.LiveKitAPI, speakers: Join
) -> None:
    await registered(server, "")
    room = new_room()
    speaker = await speakers("alice", room)
    final = await captioned(speaker)

    # Interim results of the same utterance came first, under the same segment id.
    segment = [
        c for c in speaker.captions if c.attributes["lk.segment_id"] == final.attributes["lk.segment_id"]
    ]
    assert segment[-1] is final and len(segment) >= 2 and not any(c.final for c in segment[:-1])
    [automatic] = await dispatches_of(lkapi, room, "")
    assert automatic.state.jobs[0].state.status == api.JobStatus.JS_RUNNING


async def alice_then_bob(server: Server, speakers: Join) -> tuple[Speaker, Speaker]:
    """Two participants of a new room, each captioned once: bob joined after the agent was in."""
    await registered(server, "")
    room = new_room()
    alice = await speakers("alice", room)
    await captioned(alice)
    bob = await speakers("bob", room)
    await captioned(bob)
    return alice, bob


async def test_later_participants_are_transcribed_and_leavers_released(
    server: Server, speakers: Join
) -> None:
    alice, bob = await alice_then_bob(server, speakers)
    # Everyone in the room reads everyone's captions, each from its speaker.
    await eventually(
        lambda: any(c.sender == "bob" and c.final for c in alice.captions), "alice to read bob's"
    )

    await bob.leave()
    await eventually(
        lambda: f"stopped transcribing track {bob.track_sid}" in server.log(), "the agent to let go of bob"
    )


async def test_an_utterance_cut_off_by_unpublishing_still_gets_its_final_caption(
    server: Server, speakers: Join
) -> None:
    alice, bob = await alice_then_bob(server, speakers)

    def bobs(final: bool) -> list[Caption]:
        return [c for c in alice.captions if c.sender == "bob" and c.final is final]

    finals_before = len(bobs(True))
    speaking = asyncio.create_task(bob.say("please call me back tomorrow morning and bring the documents", 0))
    await eventually(lambda: bobs(False), "bob's interim captions")
    interims = len(bobs(False))
    await eventually(lambda: len(bobs(False)) > interims, "more of bob's sentence")
    await bob.room.local_participant.unpublish_track(bob.track_sid)
    speaking.cancel()
    await eventually(lambda: len(bobs(True)) > finals_before, "a final caption for the cut-off utterance")
    last = bobs(True)[-1]
    assert last.attributes["lk.segment_id"] == bobs(False)[-1].attributes["lk.segment_id"] and last.text
