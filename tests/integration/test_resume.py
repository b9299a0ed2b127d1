"""Resuming a dropped signal connection (`reconnect=1`), with each official SDK's own reconnection path.

The signalling of the resuming participant goes through a TCP proxy that the test cuts, as a network
blip would: the SDK sees its WebSocket drop and resumes, while its media (UDP, straight to the server)
carries on. After the resume the participant keeps its sid and its track sids, and audio flows both
ways, after the ICE restart the SDK asks for. A full reconnect (the session gone) is audible too.
"""

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api, rtc
from livekit.protocol import rtc as signal

from tests.agent_workers import AgentWorker, registered
from tests.browser import BrowserScenario, served_page
from tests.conftest import Server, start_server, stop_server
from tests.integration.test_rtc_node import run_rtc_scenario, unique_room
from tests.integration.test_rtc_python import Client, signalling
from tests.polling import eventually
from tests.signal_proxy import SignalProxy, ThroughProxy

RESUME_WINDOW = 20  # room.departure_timeout: how long a participant whose signal dropped may resume
LOUD = 4000  # RMS of the relayed 440 Hz tone of amplitude 8000 is ≈5660


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        {
            "room": {"empty_timeout": 300, "departure_timeout": RESUME_WINDOW},
            "rtc": {"ice_addresses": ["127.0.0.1"]},
            "logging": {"level": "debug"},
        },
    )
    yield instance
    stop_server(instance)


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[SignalProxy]:
    async with SignalProxy.to(server) as instance:
        yield instance


class Participant(Client):
    """A Python rtc participant (see test_rtc_python) that also records its SDK's reconnections."""

    def __init__(self, identity: str) -> None:
        super().__init__(identity)
        for event in ("reconnecting", "reconnected"):
            self.room.on(event, self._recorder(event))

    def texts_received(self) -> list[str]:
        return [payload.decode(errors="replace") for _, payload, _ in self.data]

    async def hears_the_tone_again(self, what: str, frames: int = 100) -> None:
        """`frames` more loud 10 ms frames of the tone: audio flows now, not just before."""
        start = len(self.levels)
        await eventually(lambda: sum(level > LOUD for level in self.levels[start:]) >= frames, what, 15)


@pytest.fixture
async def pair(server: Server, proxy: SignalProxy) -> AsyncIterator[tuple[Participant, Participant, str]]:
    """alice signals through the proxy, bob straight to the server; both publish a tone and hear the other."""
    room = f"resume-{uuid.uuid4().hex[:8]}"
    alice, bob = Participant("alice"), Participant("bob")
    try:
        await alice.room.connect(proxy.url, server.join_token(room, "alice"))
        await bob.room.connect(server.ws_url, server.join_token(room, "bob"))
        await alice.publish_tone()
        await bob.publish_tone()
        await alice.hears_the_tone_again("alice to hear bob")
        await bob.hears_the_tone_again("bob to hear alice")
        yield alice, bob, room
    finally:
        await alice.close()
        await bob.close()


def tracks_of(room: rtc.Room) -> list[str]:
    return sorted(room.local_participant.track_publications)


async def listed(lkapi: api.LiveKitAPI, room: str) -> dict[str, api.ParticipantInfo]:
    response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity: p for p in response.participants}


async def test_python_sdk_resumes_keeping_its_sid_tracks_and_audio(
    server: Server, proxy: SignalProxy, pair: tuple[Participant, Participant, str], lkapi: api.LiveKitAPI
) -> None:
    alice, bob, room = pair
    sid, tracks = alice.room.local_participant.sid, tracks_of(alice.room)
    before, connections = await listed(lkapi, room), proxy.connections

    cut_at = time.monotonic()
    proxy.cut()
    await eventually(lambda: alice.saw("reconnected"), "alice's SDK to resume")
    print(f"\npython resume: reconnected {time.monotonic() - cut_at:.2f} s after the cut")
    assert len(alice.saw("reconnecting")) == 1 and not alice.saw("disconnected")
    assert alice.room.local_participant.sid == sid, "a resume keeps the participant sid"
    assert tracks_of(alice.room) == tracks, "a resume keeps the published tracks"
    assert proxy.connections == connections + 1, "one resume, at the first attempt"
    assert f"participant resumed room={room} identity=alice sid={sid}" in server.log()
    await alice.hears_the_tone_again("alice to hear bob after the resume")
    await bob.hears_the_tone_again("bob to hear alice after the resume")
    assert not bob.saw("participant_disconnected"), "the others never see a resumed participant leave"
    after = await listed(lkapi, room)
    assert after["alice"].sid == before["alice"].sid and after["alice"].state == api.ParticipantInfo.ACTIVE
    assert [t.sid for t in after["alice"].tracks] == [t.sid for t in before["alice"].tracks]


async def test_who_left_while_the_signal_was_down_is_gone_after_the_resume(
    server: Server, proxy: SignalProxy, pair: tuple[Participant, Participant, str]
) -> None:
    alice, _, room = pair
    carol = Participant("carol")
    await carol.room.connect(server.ws_url, server.join_token(room, "carol"))
    await eventually(lambda: "carol" in alice.room.remote_participants, "alice to see carol join")

    proxy.stall()  # alice's resume waits until the proxy lets it through
    proxy.cut()
    await eventually(lambda: f"signal lost room={room} identity=alice" in server.log(), "alice's signal loss")
    await carol.close()  # alice's signal connection is down: the server cannot tell her now
    await eventually(lambda: f"participant left room={room} identity=carol" in server.log(), "carol to leave")
    assert "carol" in alice.room.remote_participants
    proxy.release()

    await eventually(lambda: alice.saw("reconnected"), "alice's SDK to resume")
    await eventually(lambda: "carol" not in alice.room.remote_participants, "alice to learn that carol left")
    assert [p.identity for (p,) in alice.saw("participant_disconnected")] == ["carol"]
    assert sorted(alice.room.remote_participants) == ["bob"]


async def test_python_sdk_reconnects_fully_once_its_session_is_gone(
    server: Server, proxy: SignalProxy, lkapi: api.LiveKitAPI
) -> None:
    room = f"resume-gone-{uuid.uuid4().hex[:8]}"
    await lkapi.room.create_room(api.CreateRoomRequest(name=room, departure_timeout=1, empty_timeout=60))
    alice, bob = Participant("alice"), Participant("bob")
    try:
        await alice.room.connect(proxy.url, server.join_token(room, "alice"))
        await bob.room.connect(server.ws_url, server.join_token(room, "bob"))
        old_tracks = [(await alice.publish_tone()).sid]
        await bob.publish_tone()
        await bob.hears_the_tone_again("bob to hear alice")
        old_sid = alice.room.local_participant.sid

        proxy.refusing = True  # the network stays down longer than the room's departure timeout
        proxy.cut()
        await eventually(lambda: bob.saw("participant_disconnected"), "alice's session to end")
        assert f"participant did not resume room={room} identity=alice" in server.log()
        proxy.refusing = False
        await eventually(lambda: alice.saw("reconnected"), "alice's SDK to reconnect", 40)
        assert alice.room.local_participant.sid != old_sid, "a full reconnect is a new session"
        new_tracks = tracks_of(alice.room)
        assert len(new_tracks) == 1 and new_tracks != old_tracks, "its track is published again"
        await bob.hears_the_tone_again("bob to hear alice after the full reconnect")
        await alice.hears_the_tone_again("alice to hear bob after the full reconnect")
    finally:
        await alice.close()
        await bob.close()


async def resume_request(server: Server, room: str, identity: str, sid: str) -> signal.SignalResponse:
    """What the server answers a resume (`reconnect=1`) with: its first signal message."""
    async with signalling(server, room, identity, f"&reconnect=1&sid={sid}") as (_, first):
        return first


async def test_a_resume_of_a_session_that_is_not_there_asks_for_a_full_reconnect(
    server: Server, pair: tuple[Participant, Participant, str]
) -> None:
    alice, _, room = pair
    # As LiveKit: the SDKs turn this LeaveRequest into a full reconnect (a new join).
    for identity, sid in [
        ("carol", "PA_neverjoined1"),  # nobody of that identity here
        ("alice", "PA_notalicessid"),  # someone else's (or an earlier) session
        ("alice", ""),  # no sid at all
    ]:
        answer = await resume_request(server, room, identity, sid)
        assert answer.WhichOneof("message") == "leave", answer
        assert answer.leave.action == signal.LeaveRequest.RECONNECT and answer.leave.can_reconnect
    # None of those touched alice's live session.
    assert alice.room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    await alice.hears_the_tone_again("alice to keep hearing bob")


async def test_node_sdk_resumes_keeping_its_sid_tracks_and_audio(
    server: Server, proxy: SignalProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = unique_room("resume")
    monkeypatch.setenv("URL_A", proxy.url)  # alice (rtc-node) signals through the proxy
    bob = Participant("bob")  # the Python SDK, straight to the server
    await bob.room.connect(server.ws_url, server.join_token(room, "bob"))
    await bob.publish_tone()

    async def cut_once_they_hear_each_other() -> None:
        try:
            # Node and the SDK start slowly on a loaded machine: a generous bound.
            await eventually(lambda: "ready" in bob.texts_received(), "alice (node) to hear bob", 50)
            await bob.hears_the_tone_again("bob to hear alice (node)")
            proxy.cut()
            await eventually(lambda: "resumed" in bob.texts_received(), "alice (node) to resume and hear bob")
            await bob.hears_the_tone_again("bob to hear alice (node) after her resume")
            assert not bob.saw("participant_disconnected"), "bob never sees a resumed participant leave"
        except pytest.fail.Exception as exc:  # reported with what the scenario saw, once it has ended
            raise AssertionError(str(exc)) from None

    try:
        result = await run_rtc_scenario(
            server, "resume", room, "A", while_connected=cut_once_they_hear_each_other
        )
    finally:
        await bob.close()
    before, after = result["before"], result["after"]
    resumed_in = result["a"]["reconnectedAt"] - result["a"]["reconnectingAt"]
    print(f"\nnode resume: Reconnecting to Reconnected in {resumed_in} ms")
    assert result["a"]["reconnecting"] == 1 and result["a"]["disconnectedReason"] is None
    assert after["sid"] == before["sid"] and after["tracks"] == before["tracks"]
    assert after["heard"]["audibleFrames"] >= 50 and after["heard"]["rms"] > LOUD, after["heard"]
    assert f"participant resumed room={room} identity=alice sid={before['sid']}" in server.log()


@pytest.mark.parametrize("how", ["signal-reconnect", "resume-reconnect", "full-reconnect"])
async def test_browser_sdk_reconnects_by_its_own_scenarios_and_stays_audible(
    server: Server, how: str
) -> None:
    """livekit-client's `simulateScenario`: `signal-reconnect` closes its signal connection and resumes
    (same sid, same track); `full-reconnect` joins again (new sid, track published again), and so does
    `resume-reconnect` (a resume the client makes fail after the server's answer). Either way each side
    hears the other afterwards."""
    room = f"resume-browser-{uuid.uuid4().hex[:8]}"
    bob = Participant("bob")
    async with served_page() as page:
        token = server.join_token(room, "browser")
        browser = BrowserScenario(server, page, "reconnect", token, PEER_IDENTITY="bob")
        try:
            await bob.room.connect(server.ws_url, server.join_token(room, "bob"))
            await bob.publish_tone()
            await browser.start()
            await bob.hears_the_tone_again("bob to hear the browser", frames=50)
            browser.tell(how)
            await eventually(
                lambda: f"reconnected:{how}" in bob.texts_received(), f"the browser to {how}", 30
            )
            await bob.hears_the_tone_again(f"bob to hear the browser after {how}", frames=50)
            browser.tell("leave")
            result = await browser.result()
        finally:
            await browser.kill()
            await bob.close()

    [report] = result["reconnects"]
    print(f"\nbrowser {how}: reconnected in {report['reconnectedMs']} ms, events {report['events']}")
    assert report["state"] == "connected" and "Reconnected" in [e["event"] for e in report["events"]]
    before, after = report["before"], report["after"]
    if how == "signal-reconnect":
        assert after == before, "a resume keeps the sid and the track"
        assert f"participant resumed room={room} identity=browser sid={before['sid']}" in server.log()
    else:
        assert after["sid"] != before["sid"], "a full reconnect is a new session"
        assert len(after["tracks"]) == 1 and after["tracks"] != before["tracks"], (
            "its track is published again"
        )
    heard = report["heard"]
    assert heard["packetsReceived"] >= 100 and heard["loudestAudioLevel"] > 0.1, heard


async def test_a_resume_takes_over_a_signal_connection_the_server_still_holds(
    server: Server, pair: tuple[Participant, Participant, str]
) -> None:
    """A client may see its connection drop before the server does (a half-open TCP connection): its
    resume replaces the old connection at once, without waiting for it to close."""
    alice, bob, room = pair
    sid = alice.room.local_participant.sid
    started = time.monotonic()
    answer = await resume_request(server, room, "alice", sid)
    assert answer.WhichOneof("message") == "reconnect", answer
    assert time.monotonic() - started < 2, "the answer must not wait for the old connection to close"
    # The SDK's own connection was the one replaced: it resumes in turn, and keeps its sid.
    await eventually(lambda: alice.saw("reconnected"), "alice's SDK to resume")
    assert alice.room.local_participant.sid == sid
    await bob.hears_the_tone_again("bob to hear alice after both resumes")
    await alice.hears_the_tone_again("alice to hear bob after both resumes")
    assert not bob.saw("participant_disconnected")


async def test_an_agent_whose_connections_drop_resumes_and_keeps_its_job(
    server: Server, proxy: SignalProxy, lkapi: api.LiveKitAPI, tmp_path: Path
) -> None:
    """livekit-agents' own path: a blip cuts both the worker's /agent connection and its agent's /rtc one.
    The worker reconnects and keeps the job; the agent resumes with the same sid; the job runs on."""
    name = f"resumer-{uuid.uuid4().hex[:6]}"
    room = f"resume-agent-{uuid.uuid4().hex[:8]}"
    worker = AgentWorker(ThroughProxy(server, proxy), tmp_path / "worker", name, "stay")
    try:
        await registered(server, name)
        await lkapi.room.create_room(api.CreateRoomRequest(name=room))
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=room, agent_name=name))
        agent = await eventually(
            lambda: next(iter(worker.jobs().values()), None), "the agent's job to start", 60
        )
        identity = f"agent-{agent['job_id']}"
        joined = await eventually(
            lambda: lkapi.room.list_participants(api.ListParticipantsRequest(room=room)),
            "the agent to join, its media connected",
            accept=lambda listed: any(
                p.identity == identity and p.state == api.ParticipantInfo.ACTIVE for p in listed.participants
            ),
        )
        [before] = [p for p in joined.participants if p.identity == identity]

        proxy.cut()
        await eventually(
            lambda: f"participant resumed room={room} identity={identity} sid={before.sid}" in server.log(),
            "the agent to resume",
        )
        await registered(server, name, 2)  # the worker, reconnected
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        [after] = [p for p in listed.participants if p.identity == identity]
        assert after.sid == before.sid
        [dispatch] = [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.agent_name == name]
        assert [job.state.status for job in dispatch.state.jobs] == [api.JS_RUNNING]
        assert f"participant left room={room} identity={identity}" not in server.log()
    finally:
        worker.kill()
