"""The built-in voice agent still answers a participant whose signal connection dropped and was resumed.

The participant (the Python rtc SDK) signals through a TCP proxy; once the agent has greeted it, the test
cuts the proxy's connections, the SDK resumes (same sid, same track), and the agent (livekit-agents,
`agents/agent-voice-echo.yaml`) must still hear what it says and answer by voice.
"""

from collections.abc import Iterator

import pytest
from livekit import api

from tests.agent_workers import eventually, registered
from tests.conftest import Server
from tests.e2e.captions import new_room, serve_agents
from tests.e2e.test_voice_agent import AGENT, SAMPLE, Listener, greeted
from tests.signal_proxy import SignalProxy
from tests.speech import Speaker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_agents(tmp_path_factory, {AGENT: SAMPLE.read_text()})


async def test_the_voice_agent_answers_after_the_participant_resumes(
    server: Server, lkapi: api.LiveKitAPI
) -> None:
    await registered(server, AGENT)
    room = new_room()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=room, agent_name=AGENT))
    async with SignalProxy.to(server) as proxy:
        alice = Speaker("alice")
        resumed: list[str] = []
        alice.room.on("reconnected", lambda: resumed.append("reconnected"))
        listener = Listener(alice.room)
        await alice.join(proxy.url, server.join_token(room, "alice"))
        try:
            heard = await greeted(listener, alice)
            sid, track_sid = alice.room.local_participant.sid, alice.track_sid

            proxy.cut()
            await eventually(lambda: resumed, "alice's SDK to resume")
            assert alice.room.local_participant.sid == sid
            assert list(alice.room.local_participant.track_publications) == [track_sid]

            # As before the resume, every utterance is answered with "you said …".
            await alice.say("please call me back tomorrow morning")
            reply, _ = await listener.utterance(heard, "the agent's reply after the resume")
            assert "said" in reply, (reply, [c.text for c in alice.captions])
        finally:
            listener.stop()
            await alice.leave()
    assert f"participant resumed room={room} identity=alice sid={sid}" in server.log()
