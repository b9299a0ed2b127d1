"""OpenVidu's explicit-dispatch scenarios, end to end: the built-in speech-processing agent with
`processing: manual`, run by `switchboard serve` from its agents directory, a participant speaking
synthesised sentences with the Python rtc SDK, and the captions it receives on `lk.transcription`.
Also: a broken and a disabled agent next to it, and a crashed agent that the server restarts."""

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator

import pytest
from livekit import api

from tests.agent_workers import eventually, registered, registrations
from tests.browser import BrowserScenario, served_page, toolchain_or_fail
from tests.conftest import Server
from tests.e2e.captions import (
    Join,
    captioned,
    captions_agent,
    dispatches_of,
    new_room,
    serve_agents,
    started_pids,
)
from tests.speech import SENTENCES

AGENT = "speech-processing"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_agents(
        tmp_path_factory,
        {
            AGENT: captions_agent("manual"),
            "broken": captions_agent("sometimes"),
            # Automatic: it would join every room below if it were started.
            "off": captions_agent("automatic", "enabled: false\n"),
            # Valid as a file, but its plugin is not installed: its process stops with a config error.
            "plugin": "live_captions:\n  processing: manual\n  provider: assemblyai\n"
            "  assemblyai:\n    api_key: k\n",
        },
    )


async def test_only_the_valid_enabled_agent_runs(server: Server) -> None:
    await registered(server, AGENT)
    stopped = "agent plugin stopped: its configuration is wrong"
    await eventually(lambda: stopped in server.log(), "the agent without its plugin to stop for good")
    log = server.log()
    assert "plugin | " in log and "pip install 'switchboard[assemblyai]'" in log
    assert len(started_pids(server, "plugin")) == 1  # a config error is not retried
    assert "agent-broken.yaml: live_captions.processing: expected automatic or manual, got 'sometimes'" in log
    assert "agent off not started" in log
    assert "\nbroken | " not in log and "\noff | " not in log
    assert registrations(server, "") == 0 and started_pids(server, "broken") == []


async def test_manual_agent_without_a_dispatch_stays_away(
    server: Server, lkapi: api.LiveKitAPI, speakers: Join
) -> None:
    await registered(server, AGENT)  # it is there, and still stays away
    room = new_room()
    speaker = await speakers("alice", room)
    for sentence in SENTENCES[:2]:
        await speaker.say(sentence)
    assert speaker.captions == [] and speaker.agents() == []
    assert await dispatches_of(lkapi, room, AGENT) == []


async def test_dispatch_created_before_the_participant_connects(
    server: Server, lkapi: api.LiveKitAPI, speakers: Join
) -> None:
    await registered(server, AGENT)
    room = new_room()
    request = api.CreateAgentDispatchRequest(room=room, agent_name=AGENT, metadata="captions please")
    dispatch = await lkapi.agent_dispatch.create_dispatch(request)
    speaker = await speakers("bob", room)
    await captioned(speaker)
    [listed] = await dispatches_of(lkapi, room, AGENT)
    assert listed.id == dispatch.id and listed.state.jobs[0].state.status == api.JobStatus.JS_RUNNING


async def test_token_room_config_dispatches_when_the_participant_connects(
    server: Server, lkapi: api.LiveKitAPI, speakers: Join
) -> None:
    await registered(server, AGENT)
    room = new_room()
    speaker = await speakers("carol", room, agents=[AGENT])
    await eventually(lambda: dispatches_of(lkapi, room, AGENT), "the token's dispatch to be listed")
    await captioned(speaker)


async def test_a_browser_viewer_reads_the_captions(server: Server, speakers: Join) -> None:
    """livekit-client, as a captions UI uses it: the viewer's token dispatches the agent, a Python
    participant speaks, and the browser receives that participant's captions with their attributes."""
    toolchain_or_fail()
    await registered(server, AGENT)
    room = new_room()
    token = server.join_token(room, "viewer", agents=[{"agentName": AGENT}])
    async with served_page() as page:
        browser = BrowserScenario(server, page, "captions", token, PEER_IDENTITY="erin")
        await browser.start()
        speaker = await speakers("erin", room)

        async def speak_until_the_browser_is_done() -> None:
            for sentence in itertools.cycle(SENTENCES):
                assert browser.process is not None
                if browser.process.returncode is not None:
                    return
                await speaker.say(sentence)

        speaking = asyncio.create_task(speak_until_the_browser_is_done())
        try:
            read = (await browser.result())["read"]
        finally:
            speaking.cancel()
    captions = [c for c in read["captions"] if c["from"] == "erin"]
    finals = [c for c in captions if c["attributes"]["lk.transcription_final"] == "true"]
    assert finals, f"no final caption reached the browser: {read}"
    assert finals[0]["text"] and finals[0]["attributes"]["lk.transcribed_track_id"] == speaker.track_sid
    segment = finals[0]["attributes"]["lk.segment_id"]
    assert any(c["attributes"]["lk.segment_id"] == segment for c in captions if c is not finals[0])
    assert len(read["agents"]) == 1 and read["agents"][0].startswith("agent-AJ_")


async def test_a_crashed_agent_is_restarted_and_serves_the_waiting_job(
    server: Server, lkapi: api.LiveKitAPI, speakers: Join
) -> None:
    await registered(server, AGENT)
    starts = len(started_pids(server, AGENT))
    os.kill(started_pids(server, AGENT)[-1], signal.SIGKILL)
    await eventually(lambda: f"agent {AGENT} exited with code -9" in server.log(), "the crash to be noticed")

    room = new_room()  # dispatched while the agent may still be down: the job waits for it
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=room, agent_name=AGENT))
    speaker = await speakers("dave", room)
    await captioned(speaker)
    assert len(started_pids(server, AGENT)) == starts + 1
