"""Rooms with the official Python `livekit` rtc SDK: join, audio relay, data, text streams, metadata,
the RoomService methods that act on live participants, and misbehaving clients."""

import asyncio
import contextlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal

from tests.agent_workers import eventually
from tests.conftest import Server, start_server, stop_server
from tests.node_clients import run_scenario
from tests.rpc_methods import REFUSAL, RESPONSE_TIMEOUT, greeting, register_rpc_methods
from tests.signal_proxy import SignalProxy
from tests.tone import publish_tone

PING_TIMEOUT = 2
NO_AUDIO_WINDOW = 1.0
SUBSCRIPTION_DEADLINE = 10.0
MAX_BAD_FRAMES = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        {
            "rtc": {
                "ice_addresses": ["127.0.0.1"],
                "ping_interval": 1,
                "ping_timeout": PING_TIMEOUT,
                "max_bad_frames": MAX_BAD_FRAMES,
            }
        },
    )
    yield instance
    stop_server(instance)


class Client:
    """One Python rtc participant and what it observed."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.data: list[tuple[str, bytes, str]] = []
        self.texts: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, Any]] = []
        self.levels: list[float] = []
        self._tasks: set[asyncio.Future[None]] = set()
        room = self.room

        @room.on("data_received")
        def on_data(packet: rtc.DataPacket) -> None:
            sender = packet.participant.identity if packet.participant else ""
            self.data.append((sender, packet.data, rtc.DataPacketKind.Name(packet.kind)))

        @room.on("track_subscribed")
        def on_track(track: rtc.Track, *_: Any) -> None:
            self._spawn(self._measure(track))

        events = ("participant_connected", "participant_disconnected", "track_muted", "disconnected")
        events += ("track_unsubscribed", "local_track_subscribed")
        for event in (*events, "participant_metadata_changed", "participant_attributes_changed"):
            room.on(event, self._recorder(event))

        def on_text(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                self.texts.append((sender, reader.info.topic, await reader.read_all()))

            self._spawn(read())

        room.register_text_stream_handler("lk.chat", on_text)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _recorder(self, name: str) -> Callable[..., None]:
        return lambda *args: self.events.append((name, args))

    def saw(self, name: str) -> list[Any]:
        return [args for event, args in self.events if event == name]

    async def _measure(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            self.levels.append(float(np.sqrt(np.mean(samples**2))))

    async def publish_tone(self) -> rtc.LocalTrackPublication:
        publication, player = await publish_tone(self.room)
        self._tasks.add(player)
        player.add_done_callback(self._tasks.discard)
        return publication

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()


@pytest.fixture
async def clients(server: Server) -> AsyncIterator[Callable[..., Any]]:
    made: list[Client] = []
    room = f"room-{uuid.uuid4().hex[:8]}"

    async def join(identity: str, options: rtc.RoomOptions | None = None, **grants: Any) -> Client:
        client = Client(identity)
        made.append(client)
        await client.room.connect(
            server.ws_url, server.join_token(room, identity, **grants), options or rtc.RoomOptions()
        )
        return client

    join.room = room  # type: ignore[attr-defined]
    yield join
    for client in made:
        await client.close()


async def test_two_participants_see_each_other_and_hear_audio(clients: Any, lkapi: api.LiveKitAPI) -> None:
    alice = await clients("alice")
    bob = await clients("bob")
    assert alice.room.local_participant.sid.startswith("PA_") and alice.room.name == clients.room
    assert [p.identity for p in bob.room.remote_participants.values()] == ["alice"]
    await eventually(
        lambda: "bob" in {p.identity for p in alice.room.remote_participants.values()}, "alice sees bob"
    )

    publication = await alice.publish_tone()
    assert publication.sid.startswith("TR_")
    await eventually(lambda: len(bob.levels) >= 50, "bob to receive 50 audio frames")
    assert np.mean(bob.levels[-25:]) > 4000, f"relayed tone too quiet: {bob.levels[-5:]}"

    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=clients.room))
    by_identity = {p.identity: p for p in listed.participants}
    assert set(by_identity) == {"alice", "bob"}
    [track] = by_identity["alice"].tracks
    assert (track.sid, track.type, track.source) == (
        publication.sid,
        api.TrackType.AUDIO,
        api.TrackSource.MICROPHONE,
    )
    assert by_identity["alice"].state == api.ParticipantInfo.ACTIVE
    room = (await lkapi.room.list_rooms(api.ListRoomsRequest(names=[clients.room]))).rooms[0]
    assert room.num_participants == 2

    await alice.room.disconnect()
    await eventually(lambda: bob.saw("participant_disconnected"), "bob to see alice leave")
    assert bob.saw("participant_disconnected")[0][0].identity == "alice"


async def test_data_packets_both_ways_and_to_destinations(clients: Any) -> None:
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    await alice.room.local_participant.publish_data(b"to everyone", reliable=True, topic="t")
    await eventually(lambda: bob.data and carol.data, "both to receive the broadcast")
    assert bob.data[0] == ("alice", b"to everyone", "KIND_RELIABLE")
    await alice.room.local_participant.publish_data(
        b"only carol", reliable=True, destination_identities=["carol"]
    )
    await eventually(lambda: len(carol.data) == 2, "carol to receive the direct packet")
    assert carol.data[1][1] == b"only carol"

    async def lossy_arrives() -> bool:
        await bob.room.local_participant.publish_data(b"lossy", reliable=False)
        return any(d[1] == b"lossy" and d[2] == "KIND_LOSSY" for d in alice.data)

    await eventually(lossy_arrives, "a lossy packet from bob to alice")
    assert all(d[1] != b"only carol" for d in bob.data), "destinations are honoured"
    assert all(sender == "bob" for sender, payload, _ in alice.data if payload == b"lossy")


async def test_text_streams(clients: Any) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await alice.room.local_participant.send_text("hello bob", topic="lk.chat")
    await eventually(lambda: bob.texts, "bob to receive the text stream")
    assert bob.texts == [("alice", "lk.chat", "hello bob")]


async def test_attributes_and_metadata_updates_reach_others(clients: Any) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    await alice.room.local_participant.set_attributes({"mood": "happy"})
    await alice.room.local_participant.set_metadata("meta-1")
    await eventually(lambda: bob.saw("participant_attributes_changed"), "bob to see the attributes")
    await eventually(lambda: bob.saw("participant_metadata_changed"), "bob to see the metadata")
    remote = next(iter(bob.room.remote_participants.values()))
    assert remote.attributes == {"mood": "happy"} and remote.metadata == "meta-1"


async def test_metadata_update_without_the_grant_is_refused(clients: Any, lkapi: api.LiveKitAPI) -> None:
    mallory = await clients("mallory", can_update_own_metadata=False)
    # The SDK gets a NOT_ALLOWED request_response; whether it raises is its business: nothing may change.
    with contextlib.suppress(Exception):
        await mallory.room.local_participant.set_metadata("nope")
    info = await lkapi.room.get_participant(
        api.RoomParticipantIdentity(room=clients.room, identity="mallory")
    )
    assert info.metadata == ""


async def test_room_service_acts_on_live_participants(clients: Any, lkapi: api.LiveKitAPI) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    publication = await alice.publish_tone()
    await eventually(lambda: bob.levels, "bob to receive audio")
    room = clients.room

    muted = await lkapi.room.mute_published_track(
        api.MuteRoomTrackRequest(room=room, identity="alice", track_sid=publication.sid, muted=True)
    )
    assert muted.track.muted and muted.track.sid == publication.sid
    await eventually(lambda: bob.saw("track_muted"), "bob to see the track muted")
    await eventually(lambda: publication.muted, "alice's SDK to mute the track, as the server told it")

    info = await lkapi.room.update_participant(
        api.UpdateParticipantRequest(
            room=room, identity="alice", metadata="by-admin", attributes={"role": "host"}
        )
    )
    assert info.metadata == "by-admin" and dict(info.attributes) == {"role": "host"}
    await eventually(lambda: alice.room.local_participant.metadata == "by-admin", "alice to see her metadata")

    await lkapi.room.send_data(
        api.SendDataRequest(room=room, data=b"from server", kind=api.DataPacket.RELIABLE)
    )
    await eventually(lambda: any(d[1] == b"from server" for d in bob.data), "bob to receive server data")

    got = await lkapi.room.get_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
    assert got.identity == "bob" and got.sid == bob.room.local_participant.sid
    await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
    await eventually(lambda: bob.saw("disconnected"), "bob to be disconnected")
    assert bob.saw("disconnected")[0][0] == rtc.DisconnectReason.PARTICIPANT_REMOVED
    await eventually(lambda: alice.saw("participant_disconnected"), "alice to see bob removed")

    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
    await eventually(lambda: alice.saw("disconnected"), "alice to be disconnected by DeleteRoom")
    assert alice.saw("disconnected")[0][0] == rtc.DisconnectReason.ROOM_DELETED


async def test_room_service_acts_on_live_participants_with_the_node_sdk(clients: Any, server: Server) -> None:
    """The same methods with the Node `livekit-server-sdk` (Twirp JSON), as the Python SDK's above."""
    alice, bob, carol = await clients("alice"), await clients("bob"), await clients("carol")
    publication = await alice.publish_tone()
    await eventually(lambda: bob.levels, "bob to receive audio")
    env = {"SCENARIO_ROOM": clients.room, "SCENARIO_IDENTITY": "alice", "SCENARIO_TRACK": publication.sid}
    node = await run_scenario(server, "live-participants", SCENARIO_LISTENER="bob", **env)

    assert sorted(p["identity"] for p in node["listed"]) == ["alice", "bob", "carol"], node["listed"]
    got = node["got"]
    assert (got["identity"], got["sid"], got["state"]) == (
        "alice",
        alice.room.local_participant.sid,
        "ACTIVE",
    )
    assert [t["sid"] for t in got["tracks"]] == [publication.sid], got
    updated = node["updated"]
    assert (updated["name"], updated["metadata"], updated["attributes"]) == (
        "Renamed",
        "by-node",
        {"role": "host"},
    )
    assert (node["muted"]["sid"], node["muted"]["muted"]) == (publication.sid, True), node["muted"]
    assert node["missing"]["ok"] is False and node["missing"]["error"]["code"] == "not_found", node["missing"]
    assert sorted(p["identity"] for p in node["listedAfter"]) == ["bob", "carol"], node["listedAfter"]

    # What the participants saw of it.
    await eventually(lambda: alice.room.local_participant.metadata == "by-node", "alice to see her metadata")
    assert alice.room.local_participant.name == "Renamed"
    assert alice.room.local_participant.attributes == {"role": "host"}
    await eventually(lambda: bob.saw("track_muted"), "bob to see alice's track muted")
    await eventually(lambda: any(d[1] == b"from node" for d in bob.data), "bob to receive the data")
    await eventually(lambda: alice.saw("disconnected"), "alice to be removed")
    assert alice.saw("disconnected")[0][0] == rtc.DisconnectReason.PARTICIPANT_REMOVED
    assert all(d[1] != b"from node" for d in carol.data), "only its destination receives the data"


async def test_publishing_without_the_grant_fails(clients: Any) -> None:
    listener = await clients("listener", can_publish=False)
    with pytest.raises(Exception, match=r"(?i)not allowed|permission|timed? ?out|publish"):
        await asyncio.wait_for(listener.publish_tone(), 15)


async def test_max_participants_is_enforced(server: Server) -> None:
    room = f"small-{uuid.uuid4().hex[:8]}"
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name=room, max_participants=1))
    first, second = rtc.Room(), rtc.Room()
    try:
        await first.connect(server.ws_url, server.join_token(room, "first"))
        with pytest.raises(rtc.ConnectError, match=r"(?i)full|403"):
            await second.connect(server.ws_url, server.join_token(room, "second"))
    finally:
        await first.disconnect()


async def test_bad_token_is_refused_before_the_upgrade(server: Server) -> None:
    room = rtc.Room()
    token = api.AccessToken(server.api_key, "a-wrong-secret-a-wrong-secret-a-wrong-secret")
    token = token.with_identity("eve").with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    with pytest.raises(rtc.ConnectError, match=r"(?i)401|unauthorized|signature"):
        await room.connect(server.ws_url, token)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http_url}/rtc/validate", params={"access_token": token}) as response:
            assert response.status == 401 and "signature" in await response.text()
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        good = server.join_token("r", "ok")
        async with session.get(f"{server.http_url}/rtc/validate", params={"access_token": good}) as response:
            assert response.status == 200 and await response.text() == "success"
        for path in ("/rtc/v1", "/rtc/v1/validate"):
            async with session.get(server.http_url + path) as response:
                assert response.status == 404 and "requested room does not exist" not in await response.text()


async def raw_join(server: Server, room: str, identity: str) -> tuple[aiohttp.ClientSession, Any]:
    """A hand-driven signalling connection: it joins, then does whatever the test makes it do."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(
        f"{server.ws_url}/rtc?protocol=16&auto_subscribe=1",
        headers={"Authorization": f"Bearer {server.join_token(room, identity)}"},
    )
    first = signal.SignalResponse.FromString((await ws.receive()).data)
    assert first.WhichOneof("message") == "join" and first.join.participant.identity == identity
    assert first.join.ping_interval > 0 and first.join.ping_timeout > 0 and first.join.subscriber_primary
    return session, ws


async def test_garbage_and_silent_clients_do_not_harm_the_room(
    server: Server, clients: Any, lkapi: Any
) -> None:
    alice = await clients("alice")
    session, ws = await raw_join(server, clients.room, "garbage")
    for frame in (b"\xff\xff\xff\xff", b"", b"\x0a\x05junk"):
        await ws.send_bytes(frame)
    await ws.send_str("{not json")
    # It never answers the subscriber offer, and stops talking: it is removed after the ping timeout.
    await eventually(lambda: any(p.identity == "garbage" for p in alice.room.remote_participants.values()),
                     "alice to see the raw client")  # fmt: skip
    joining = await lkapi.room.get_participant(
        api.RoomParticipantIdentity(room=clients.room, identity="garbage")
    )
    assert joining.state == api.ParticipantInfo.JOINED, "its media never connected"
    await eventually(lambda: alice.saw("participant_disconnected"), "the silent client to be removed")
    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=clients.room))
    assert [p.identity for p in listed.participants] == ["alice"]
    await session.close()

    bob = await clients("bob")
    await alice.room.local_participant.publish_data(b"still fine", reliable=True)
    await eventually(lambda: bob.data, "the room to keep working")


async def test_client_that_leaves_mid_negotiation(server: Server, clients: Any) -> None:
    alice = await clients("alice")
    for attempt in range(3):
        session, ws = await raw_join(server, clients.room, f"flaky-{attempt}")
        await ws.close()
        await session.close()
    bob = await clients("bob")
    await alice.room.local_participant.publish_data(b"after", reliable=True)
    await eventually(lambda: bob.data, "the room to keep working")
    await eventually(
        lambda: {p.identity for p in alice.room.remote_participants.values()} == {"bob"}, "only bob to remain"
    )


async def test_fifty_join_leave_cycles(server: Server, clients: Any, lkapi: api.LiveKitAPI) -> None:
    anchor = await clients("anchor")
    for cycle in range(50):
        visitor = rtc.Room()
        await visitor.connect(server.ws_url, server.join_token(clients.room, f"visitor-{cycle}"))
        await visitor.disconnect()
    await eventually(lambda: not anchor.room.remote_participants, "every visitor to be gone")
    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=clients.room))
    assert [p.identity for p in listed.participants] == ["anchor"]
    assert len(anchor.saw("participant_connected")) == 50


async def test_a_malformed_offer_ends_only_that_session(server: Server, clients: Any) -> None:
    alice = await clients("alice")
    session, ws = await raw_join(server, clients.room, "bad-sdp")
    bad = signal.SignalRequest(
        offer=signal.SessionDescription(type="offer", sdp="v=0\r\nthis is not sdp", id=1)
    )
    await ws.send_bytes(bad.SerializeToString())
    closed = await asyncio.wait_for(ws.receive(), 10)
    while closed.type == aiohttp.WSMsgType.BINARY:  # signalling sent before the close
        closed = await asyncio.wait_for(ws.receive(), 10)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await session.close()
    bob = await clients("bob")
    await alice.room.local_participant.publish_data(b"still fine", reliable=True)
    await eventually(lambda: bob.data, "the room to keep working")


async def test_tracks_published_in_quick_succession_are_all_relayed(clients: Any) -> None:
    listener = await clients("listener")
    levels: dict[str, list[float]] = {}

    def on_track(track: rtc.Track, _: Any, participant: rtc.RemoteParticipant) -> None:
        async def measure() -> None:
            async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
                samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                levels.setdefault(participant.identity, []).append(float(np.sqrt(np.mean(samples**2))))

        listener._spawn(measure())

    listener.room.on("track_subscribed", on_track)
    speakers = [await clients(f"speaker-{i}") for i in range(3)]
    await asyncio.gather(*(speaker.publish_tone() for speaker in speakers))

    def all_audible() -> bool:
        return len(levels) == 3 and all(len(v) >= 50 and np.mean(v[-25:]) > 4000 for v in levels.values())

    await eventually(all_audible, "the listener to hear all three speakers")


async def test_a_late_joiner_is_offered_every_track_of_the_room_at_once(
    server: Server, clients: Any, lkapi: api.LiveKitAPI
) -> None:
    """The tracks already in the room come in the joiner's first subscriber offer, not in one offer after
    another, each waiting for the answer to the one before."""
    speakers = [await clients(f"speaker-{i}") for i in range(3)]
    await asyncio.gather(*(speaker.publish_tone() for speaker in speakers))

    async def tracks() -> int:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=clients.room))
        return sum(len(p.tracks) for p in listed.participants)

    await eventually(tracks, "the speakers' tracks listed", accept=lambda n: n == 3)
    async with signalling(server, clients.room, "late") as (ws, _):
        message = signal.SignalResponse()
        while message.WhichOneof("message") != "offer":
            message = signal.SignalResponse.FromString((await ws.receive(timeout=10)).data)
        await ws.send_bytes(signal.SignalRequest(leave=signal.LeaveRequest()).SerializeToString())
    assert message.offer.sdp.count("m=audio ") == 3, message.offer.sdp


ANSWER_RACE_ROUNDS = 5
"""Rooms in which a track comes while the joiner's first offer is out: without the wait for the
connection, a round loses the race about one time in three (three of four runs of three rounds failed)."""


async def test_a_track_published_while_a_joiner_answers_its_first_offer_is_heard(tmp_path: Path) -> None:
    """A track that comes while a joining participant's first subscriber offer is out is added once that
    offer is answered and the connection it sets up is up: aiortc connects an answer in a task of its own,
    and a second answer that arrives while the first is still connecting never starts its new sender (the
    track stays silent). A proxy holds the server's messages to the joiner until the track is there. The
    joiner says nothing meanwhile: a server of its own, with the default ping timeout, waits for it."""
    server = start_server(tmp_path / "server")
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            for round_ in range(ANSWER_RACE_ROUNDS):
                await join_while_a_track_comes(server, lkapi, f"answer-race-{round_}")
    finally:
        stop_server(server)


async def join_while_a_track_comes(server: Server, lkapi: api.LiveKitAPI, room: str) -> None:
    speaker, listener = Client("speaker"), Client("listener")

    async def who_and_tracks() -> dict[str, int]:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return {p.identity: len(p.tracks) for p in listed.participants}

    try:
        await speaker.room.connect(server.ws_url, server.join_token(room, "speaker"))
        async with SignalProxy.to(server) as proxy:
            proxy.hold_replies()
            joining = asyncio.ensure_future(
                listener.room.connect(proxy.url, server.join_token(room, "listener"))
            )
            try:
                await eventually(who_and_tracks, "the listener's join", accept=lambda w: "listener" in w)
                await speaker.publish_tone()
                # The speaker's track is listed once the server has taken its offer, which asked for the
                # listener's subscription to it: while the listener's first offer waits in the proxy.
                await eventually(who_and_tracks, "the speaker's track", accept=lambda w: w["speaker"] == 1)
                proxy.pass_replies()
                await joining
                await eventually(
                    lambda: len(listener.levels) >= 50 and np.mean(listener.levels[-25:]) > 4000,
                    f"the listener to hear the speaker in {room}",
                )
            finally:
                joining.cancel()
                await listener.close()  # while the proxy is there: no resume through a closed port
    finally:
        await speaker.close()


async def test_clients_without_auto_subscribe_choose_their_tracks(clients: Any) -> None:
    alice = await clients("alice")
    picky = await clients("picky", rtc.RoomOptions(auto_subscribe=False))
    await alice.publish_tone()

    def alices_track() -> rtc.RemoteTrackPublication | None:
        participant = picky.room.remote_participants.get("alice")
        return next(iter(participant.track_publications.values()), None) if participant else None

    await eventually(lambda: alices_track() is not None, "picky to learn of alice's track")
    publication = alices_track()
    assert publication is not None and not publication.subscribed and not picky.levels

    publication.set_subscribed(True)
    await eventually(lambda: len(picky.levels) >= 50, "picky to receive the track it asked for")
    assert np.mean(picky.levels[-25:]) > 4000

    publication.set_subscribed(False)
    await eventually(lambda: picky.saw("track_unsubscribed"), "picky to be unsubscribed")
    received = len(picky.levels)
    await asyncio.sleep(NO_AUDIO_WINDOW)  # a window in which nothing may arrive
    assert len(picky.levels) == received, "audio still arrives after unsubscribing"

    publication.set_subscribed(True)  # and back: the choice can change any number of times
    await eventually(lambda: len(picky.levels) >= received + 50, "picky to receive the track again")


async def test_subscribing_to_an_unknown_track_is_answered_with_an_error(
    server: Server, clients: Any
) -> None:
    session, ws = await raw_join(server, clients.room, "raw")
    try:
        named = signal.UpdateSubscription(
            track_sids=["TR_missing"],
            subscribe=True,
            participant_tracks=[models.ParticipantTracks(participant_sid="PA_x", track_sids=["TR_missing"])],
        )
        await ws.send_bytes(signal.SignalRequest(subscription=named).SerializeToString())
        dropped = signal.UpdateSubscription(track_sids=["TR_gone"], subscribe=False)
        await ws.send_bytes(signal.SignalRequest(subscription=dropped).SerializeToString())
        await ws.send_bytes(signal.SignalRequest(ping=1).SerializeToString())  # its pong ends what we read

        answers: list[signal.SubscriptionResponse] = []
        while True:
            response = signal.SignalResponse.FromString((await asyncio.wait_for(ws.receive(), 10)).data)
            if response.WhichOneof("message") == "pong":
                break
            if response.WhichOneof("message") == "subscription_response":
                answers.append(response.subscription_response)
        # Once, though named twice; nothing for the unsubscribe from a track that is not there.
        assert [(a.track_sid, a.err) for a in answers] == [("TR_missing", models.SE_TRACK_NOTFOUND)]
    finally:
        await session.close()


async def test_a_publisher_is_told_once_when_its_track_is_first_subscribed(clients: Any) -> None:
    alice = await clients("alice")
    publication = await alice.publish_tone()

    # Not yet: a participant that does not subscribe, and a hidden one (it receives, but does not count).
    await clients("picky", rtc.RoomOptions(auto_subscribe=False))
    hidden = await clients("hidden", hidden=True)
    await eventually(lambda: len(hidden.levels) >= 50, "the hidden participant to receive alice's audio")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(publication.wait_for_subscription(), NO_AUDIO_WINDOW)

    bob = await clients("bob")
    await asyncio.wait_for(publication.wait_for_subscription(), SUBSCRIPTION_DEADLINE)
    await eventually(lambda: len(bob.levels) >= 50, "bob to receive alice's audio")
    carol = await clients("carol")
    await eventually(lambda: len(carol.levels) >= 50, "carol to receive alice's audio")
    assert len(alice.saw("local_track_subscribed")) == 1, "told once per track, not once per subscriber"

    # A new track is a new first subscription.
    second = await alice.publish_tone()
    await asyncio.wait_for(second.wait_for_subscription(), SUBSCRIPTION_DEADLINE)
    await eventually(lambda: len(alice.saw("local_track_subscribed")) == 2, "the second track's event")


@contextlib.asynccontextmanager
async def signalling(
    server: Server, room: str, identity: str, query: str = ""
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, signal.SignalResponse]]:
    """A hand-driven `/rtc` connection (`query` added to the URL's), and the first message the server sent."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{server.ws_url}/rtc?protocol=16{query}",
            headers={"Authorization": f"Bearer {server.join_token(room, identity)}"},
        ) as ws,
    ):
        yield ws, signal.SignalResponse.FromString((await ws.receive()).data)


async def test_the_server_advertises_a_livekit_version(server: Server, clients: Any) -> None:
    async with signalling(server, clients.room, "raw") as (ws, first):
        join = first.join
        await ws.send_bytes(signal.SignalRequest(leave=signal.LeaveRequest()).SerializeToString())
    # The Rust-based SDKs refuse RPC (1403 "RPC not supported by server") below 1.8.0.
    assert join.server_version == "1.9.0" and join.server_info.version == "1.9.0"
    assert join.server_info.protocol == 16 and join.server_info.debug_info.startswith("switchboard ")
    async with aiohttp.ClientSession() as http, http.get(server.http_url + "/") as response:
        assert await response.text() == "OK" and response.headers["Server"].startswith("switchboard/")


async def test_rpc_between_participants_both_ways(clients: Any) -> None:
    """perform_rpc / register_rpc_method (refused by the Rust-based SDKs below server 1.8.0, see above):
    answers, the handler's own errors, unknown methods, response and connection timeouts, and a recipient
    that leaves mid-call, each as the SDK reports it."""
    alice, bob = await clients("alice"), await clients("bob")
    invoked = {p.identity: register_rpc_methods(p.room.local_participant) for p in (alice, bob)}
    await eventually(lambda: "alice" in bob.room.remote_participants, "bob to see alice")
    await eventually(lambda: "bob" in alice.room.remote_participants, "alice to see bob")

    for caller, callee in ((bob, alice), (alice, bob)):
        local = caller.room.local_participant

        async def call(method: str, callee: str = callee.identity, **options: Any) -> str:
            return await local.perform_rpc(  # noqa: B023
                destination_identity=callee, method=method, payload="42", **options
            )

        assert await call("greet") == greeting(caller.identity, "42")
        with pytest.raises(rtc.RpcError) as refused:
            await call("refuse")
        assert (refused.value.code, refused.value.message, refused.value.data) == REFUSAL
        with pytest.raises(rtc.RpcError) as unknown:
            await call("missing")
        assert unknown.value.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
        with pytest.raises(rtc.RpcError) as late:
            await call("slow", response_timeout=RESPONSE_TIMEOUT)
        assert late.value.code == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT
        assert invoked[callee.identity] == ["greet", "refuse", "slow"], "unknown methods reach no handler"

    # Nobody acknowledges a call to a participant who is not there: the server must not answer for it.
    with pytest.raises(rtc.RpcError) as nobody:
        await bob.room.local_participant.perform_rpc(
            destination_identity="nobody", method="greet", payload="", max_round_trip_latency=RESPONSE_TIMEOUT
        )
    assert nobody.value.code == rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT

    # The callee leaves while the call is in flight.
    pending = asyncio.ensure_future(
        bob.room.local_participant.perform_rpc(destination_identity="alice", method="slow", payload="")
    )
    await eventually(lambda: invoked["alice"].count("slow") == 2, "alice to be running the call")
    await alice.room.disconnect()
    with pytest.raises(rtc.RpcError) as gone:
        await asyncio.wait_for(pending, SUBSCRIPTION_DEADLINE)
    assert gone.value.code == rtc.RpcError.ErrorCode.RECIPIENT_DISCONNECTED


async def test_the_others_learn_why_a_participant_left(clients: Any, lkapi: api.LiveKitAPI) -> None:
    """livekit-agents ends a voice session when its participant leaves for some reasons (a leave of
    their own, a removal…), and otherwise waits for them to come back: the reason must reach the others."""
    alice = await clients("alice")
    bob = await clients("bob")
    await clients("carol")
    await eventually(lambda: len(alice.room.remote_participants) == 2, "alice to see bob and carol")

    await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=clients.room, identity="carol"))
    await bob.room.disconnect()

    def reasons() -> dict[str, Any]:
        return {p.identity: p.disconnect_reason for (p,) in alice.saw("participant_disconnected")}

    await eventually(lambda: len(reasons()) == 2, "alice to see both leave")
    assert reasons() == {
        "bob": rtc.DisconnectReason.CLIENT_INITIATED,
        "carol": rtc.DisconnectReason.PARTICIPANT_REMOVED,
    }


async def read_signal_until(
    ws: Any, done: Callable[[signal.SignalResponse], bool], deadline: float = 15.0
) -> list[signal.SignalResponse]:
    """Read a raw client's signal responses (pinging now and then, so it stays in the room) until `done`
    holds for one of them."""
    seen: list[signal.SignalResponse] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        await ws.send_bytes(signal.SignalRequest(ping=1).SerializeToString())
        pinged = loop.time()
        while loop.time() < min(end, pinged + 0.5):
            try:
                message = await asyncio.wait_for(ws.receive(), pinged + 0.5 - loop.time())
            except TimeoutError:
                break
            if message.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"signal connection ended: {message}")
            seen.append(signal.SignalResponse.FromString(message.data))
            if done(seen[-1]):
                return seen
    kinds = Counter(response.WhichOneof("message") for response in seen)
    raise AssertionError(f"not seen within {deadline}s; saw {dict(kinds)}")


async def test_a_leaving_participant_is_announced_with_its_full_info(server: Server, clients: Any) -> None:
    """The participant-left update carries the last full info, as LiveKit's: the SDKs' "participant
    disconnected" event still shows the participant's name, metadata, attributes and kind."""
    alice = await clients("alice")
    session, ws = await raw_join(server, clients.room, "watcher")
    profile = {"name": "Bob B.", "metadata": "from-token", "attributes": {"team": "blue"}}
    bob = await clients("bob", profile=profile)
    await bob.publish_tone()
    await bob.room.local_participant.set_metadata("updated")
    await bob.room.local_participant.set_attributes({"mood": "calm"})
    await eventually(
        lambda: alice.room.remote_participants["bob"].metadata == "updated", "alice to see bob's metadata"
    )
    await bob.room.disconnect()

    await eventually(lambda: alice.saw("participant_disconnected"), "alice to see bob leave")
    [(left,)] = alice.saw("participant_disconnected")
    assert (left.identity, left.name, left.metadata) == ("bob", "Bob B.", "updated")
    assert left.attributes == {"team": "blue", "mood": "calm"}
    assert left.kind == rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    assert left.disconnect_reason == rtc.DisconnectReason.CLIENT_INITIATED

    def bob_left(response: signal.SignalResponse) -> bool:
        updates = response.update.participants if response.WhichOneof("message") == "update" else []
        return any(p.identity == "bob" and p.state == models.ParticipantInfo.DISCONNECTED for p in updates)

    try:
        seen = await read_signal_until(ws, bob_left)
    finally:
        await session.close()
    [info] = [p for p in seen[-1].update.participants if p.identity == "bob"]
    assert (info.sid, info.name, info.metadata) == (bob.room.local_participant.sid, "Bob B.", "updated")
    assert dict(info.attributes) == {"team": "blue", "mood": "calm"}
    assert info.kind == models.ParticipantInfo.STANDARD and info.permission.can_publish
    assert not info.tracks, "as LiveKit, whose tracks are closed before the participant-left update"
    assert info.disconnect_reason == models.CLIENT_INITIATED


async def test_a_track_published_again_is_heard_every_time(clients: Any) -> None:
    """Unpublish, publish again, mute and unmute, as often as one likes: the subscriber hears every new
    track (its reused slot on the subscriber connection starts sending again)."""
    alice = await clients("alice")
    bob = await clients("bob")

    async def heard(what: str) -> None:
        start = len(bob.levels)
        await eventually(lambda: len(bob.levels) >= start + 50, f"bob to hear {what}")
        await eventually(lambda: np.mean(bob.levels[-25:]) > 4000, f"{what} to be loud enough for bob")

    for cycle in range(3):
        publication = await alice.publish_tone()
        await heard(f"alice's track #{cycle + 1}")
        await alice.room.local_participant.unpublish_track(publication.sid)
        gone = cycle + 1
        await eventually(lambda: len(bob.saw("track_unsubscribed")) == gone, "bob to be unsubscribed")  # noqa: B023

    publication = await alice.publish_tone()
    await heard("alice's fourth track")
    for cycle in range(3):
        muted = len(bob.saw("track_muted"))
        publication.track.mute()
        await eventually(lambda: len(bob.saw("track_muted")) > muted, "bob to see the mute")  # noqa: B023
        publication.track.unmute()
        await heard(f"alice after unmute #{cycle + 1}")


def encrypted(key: bytes) -> rtc.RoomOptions:
    """The SDK's end-to-end encryption with a shared key: media frames and data packets are encrypted
    by the sender and decrypted by the receivers; the server only relays them."""
    options = rtc.E2EEOptions(key_provider_options=rtc.KeyProviderOptions(shared_key=key))
    return rtc.RoomOptions(encryption=options)


async def test_end_to_end_encrypted_data_and_audio_pass_through(clients: Any) -> None:
    key = b"a shared key known to the participants only"
    alice = await clients("alice", encrypted(key))
    bob = await clients("bob", encrypted(key))
    carol = await clients("carol", encrypted(key))
    await eventually(lambda: len(alice.room.remote_participants) == 2, "alice to see bob and carol")

    # Encrypted data (DataPacket.encrypted_packet): stamped with the sender, destinations honoured.
    await alice.room.local_participant.publish_data(b"secret for all", reliable=True, topic="t")
    await eventually(lambda: bob.data and carol.data, "bob and carol to decrypt alice's packet")
    assert bob.data[0] == carol.data[0] == ("alice", b"secret for all", "KIND_RELIABLE")
    await alice.room.local_participant.publish_data(
        b"secret for carol", reliable=True, destination_identities=["carol"]
    )
    await eventually(lambda: len(carol.data) == 2, "carol to receive the packet meant for her")
    assert carol.data[1] == ("alice", b"secret for carol", "KIND_RELIABLE")
    await bob.room.local_participant.publish_data(b"lossy secret", reliable=False)
    await eventually(lambda: any(d[1] == b"lossy secret" for d in alice.data), "alice to get bob's packet")
    assert all(d[1] != b"secret for carol" for d in bob.data), "destinations are honoured"
    # RPC, which rides on the same (encrypted) data packets.
    register_rpc_methods(carol.room.local_participant)
    answer = await bob.room.local_participant.perform_rpc(
        destination_identity="carol", method="greet", payload="s"
    )
    assert answer == greeting("bob", "s")

    # Encrypted audio: relayed untouched, decrypted by a receiver with the key.
    publication = await alice.publish_tone()
    assert publication.encryption_type == rtc.EncryptionType.GCM
    await eventually(lambda: bob.room.remote_participants["alice"].track_publications, "bob to see the track")
    [remote] = bob.room.remote_participants["alice"].track_publications.values()
    assert remote.encryption_type == rtc.EncryptionType.GCM, "the track is announced as encrypted"
    await eventually(lambda: len(bob.levels) >= 50, "bob to receive alice's encrypted audio")
    await eventually(lambda: np.mean(bob.levels[-25:]) > 4000, "bob to decrypt alice's tone")

    # It is really encrypted: a participant with another key receives the track, but not the tone.
    dave = await clients("dave", encrypted(b"not the key the others share"))
    await eventually(lambda: len(dave.levels) >= 100, "dave to receive alice's track")
    assert max(dave.levels[-50:]) < 1000, f"decoded without the key: {dave.levels[-5:]}"


async def test_track_subscription_permissions_are_enforced(server: Server, clients: Any) -> None:
    """A publisher chooses who may receive its tracks (`set_track_subscription_permissions`): the others
    are not subscribed, a subscriber who loses permission is unsubscribed, and each is told why with
    `subscription_permission_update`, as LiveKit does."""
    alice = await clients("alice")
    bob, carol = await clients("bob"), await clients("carol")
    local = alice.room.local_participant
    local.set_track_subscription_permissions(
        allow_all_participants=False,
        participant_permissions=[rtc.ParticipantTrackPermission(participant_identity="bob", allow_all=True)],
    )
    publication = await alice.publish_tone()
    session, ws = await raw_join(server, clients.room, "watcher")  # not allowed: told so, never sent
    try:

        def told(allowed: bool) -> Callable[[signal.SignalResponse], bool]:
            def check(response: signal.SignalResponse) -> bool:
                update = response.subscription_permission_update
                return response.WhichOneof("message") == "subscription_permission_update" and (
                    update.track_sid,
                    update.participant_sid,
                    update.allowed,
                ) == (publication.sid, local.sid, allowed)

            return check

        await read_signal_until(ws, told(False))

        await eventually(lambda: len(bob.levels) >= 50, "bob, who is allowed, to receive alice's audio")
        assert not carol.levels and not carol.saw("track_subscribed"), "carol is not allowed"

        # Alice lets carol in and shuts bob out (by track sid this time): carol receives, bob stops.
        local.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(
                    participant_identity="carol", allowed_track_sids=[publication.sid]
                ),
                rtc.ParticipantTrackPermission(participant_identity="watcher", allow_all=True),
            ],
        )
        await eventually(lambda: len(carol.levels) >= 50, "carol, now allowed, to receive alice's audio")
        assert np.mean(carol.levels[-25:]) > 4000

        # The Python SDK shows no event for it (it ignores subscription_permission_update): what bob
        # hears says it. His slot is silenced at once; then nothing loud may reach him.
        def bob_hears_nothing() -> bool:
            return bool(bob.levels) and float(np.mean(bob.levels[-5:])) < 100

        async def bob_stopped_hearing() -> bool:
            before = len(bob.levels)
            await asyncio.sleep(0.2)
            return len(bob.levels) == before or bob_hears_nothing()

        await eventually(bob_stopped_hearing, "bob to stop hearing alice")
        received = len(bob.levels)
        await asyncio.sleep(NO_AUDIO_WINDOW)  # a window in which nothing audible may arrive
        assert all(level < 100 for level in bob.levels[received:]), "bob still hears alice"
        await read_signal_until(ws, told(True))  # the watcher is told it may now receive the track

        # Everyone again.
        local.set_track_subscription_permissions(allow_all_participants=True)
        await eventually(
            lambda: len(bob.levels) > received + 25 and np.mean(bob.levels[-25:]) > 4000,
            "bob to hear alice again",
        )
    finally:
        await session.close()


async def twirp_json(server: Server, method: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    """A RoomService call as `curl` makes it (the Python and Node server SDKs have no PerformRpc yet)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/twirp/livekit.RoomService/{method}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.headers["Content-Type"] == "application/json"
        return response.status, await response.json()


async def test_room_service_calls_a_participant_rpc_method(server: Server, clients: Any) -> None:
    """RoomService.PerformRpc: the server calls a method the participant registered, over the SDK's own
    RPC protocol, and answers with its response, its error, or a timeout, in LiveKit's words."""
    alice = await clients("alice")
    invoked = register_rpc_methods(alice.room.local_participant)

    admin = server.token(room_admin=True, room=clients.room)
    call = {"room": clients.room, "destination_identity": "alice", "method": "greet", "payload": "42"}
    status, answer = await twirp_json(server, "PerformRpc", call, admin)
    assert status == 200 and re.fullmatch(r"hello [0-9a-f-]{36}, you sent 42", answer["payload"]), answer
    assert invoked == ["greet"]  # the caller it was told of is the request's own id, as LiveKit sends it

    # The same call in protobuf, as the server SDKs send their requests.
    request = api.PerformRpcRequest(
        room=clients.room, destination_identity="alice", method="greet", payload="pb"
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/twirp/livekit.RoomService/PerformRpc",
            data=request.SerializeToString(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/protobuf"},
        ) as response,
    ):
        assert response.status == 200
        assert api.PerformRpcResponse.FromString(await response.read()).payload.endswith(", you sent pb")

    refused = await twirp_json(server, "PerformRpc", {**call, "method": "refuse"}, admin)
    assert refused == (500, {"code": "unknown", "msg": "RpcError 2001: refused: on purpose"})
    missing = await twirp_json(server, "PerformRpc", {**call, "method": "missing"}, admin)
    assert missing[0] == 400 and missing[1]["code"] == "invalid_argument"
    assert missing[1]["msg"].startswith("RpcError 1400: "), missing
    late = await twirp_json(
        server, "PerformRpc", {**call, "method": "slow", "response_timeout_ms": 1000}, admin
    )
    assert late == (408, {"code": "canceled", "msg": "RpcError 1502: Response timeout"})

    nobody = await twirp_json(server, "PerformRpc", {**call, "destination_identity": "nobody"}, admin)
    assert nobody[0] == 404 and nobody[1]["code"] == "not_found"
    other_room = server.token(room_admin=True, room="elsewhere")
    denied = await twirp_json(server, "PerformRpc", call, other_room)
    assert denied[0] == 403 and denied[1]["code"] == "permission_denied"


async def test_room_service_updates_a_participants_subscriptions(
    server: Server, clients: Any, lkapi: api.LiveKitAPI
) -> None:
    alice = await clients("alice")
    picky = await clients("picky", rtc.RoomOptions(auto_subscribe=False))
    publication = await alice.publish_tone()
    await eventually(lambda: picky.room.remote_participants["alice"].track_publications, "picky to see it")
    assert not picky.levels

    subscribe = api.UpdateSubscriptionsRequest(
        room=clients.room, identity="picky", track_sids=[publication.sid], subscribe=True
    )
    await lkapi.room.update_subscriptions(subscribe)
    await eventually(lambda: len(picky.levels) >= 50, "picky to receive the track the API subscribed")
    assert np.mean(picky.levels[-25:]) > 4000

    subscribe.subscribe = False
    await lkapi.room.update_subscriptions(subscribe)

    async def picky_stopped_hearing() -> bool:
        before = len(picky.levels)
        await asyncio.sleep(0.2)
        return len(picky.levels) == before or float(np.mean(picky.levels[-5:])) < 100

    await eventually(picky_stopped_hearing, "picky to stop receiving once the API unsubscribed it")

    with pytest.raises(api.TwirpError) as missing:
        subscribe.identity = "nobody"
        await lkapi.room.update_subscriptions(subscribe)
    assert missing.value.code == "not_found"

    # The Node server SDK (JSON) does the same.
    env = {"SCENARIO_ROOM": clients.room, "SCENARIO_IDENTITY": "picky", "SCENARIO_TRACK": publication.sid}
    heard = len(picky.levels)
    node = await run_scenario(server, "update-subscriptions", SCENARIO_SUBSCRIBE="1", **env)
    assert node["result"]["ok"] is True, node
    assert node["missing"]["ok"] is False and node["missing"]["error"]["code"] == "not_found", node
    await eventually(
        lambda: len(picky.levels) > heard + 50 and np.mean(picky.levels[-25:]) > 4000,
        "picky to receive the track the Node SDK subscribed",
    )


async def test_room_service_moves_a_participant_to_another_room(
    server: Server, clients: Any, lkapi: api.LiveKitAPI
) -> None:
    """MoveParticipant: the participant goes, on its own connection and with its track, to another room:
    the old room sees it leave, the new one sees it join, and audio flows both ways there."""
    alice, carol = await clients("alice"), await clients("carol")
    destination = f"{clients.room}-b"
    await lkapi.room.create_room(api.CreateRoomRequest(name=destination))
    bob = Client("bob")
    try:
        await bob.room.connect(server.ws_url, server.join_token(destination, "bob"))
        await alice.publish_tone()
        await bob.publish_tone()
        await eventually(lambda: len(carol.levels) >= 50, "carol to hear alice before the move")
        moved: list[str] = []
        alice.room.on("moved", lambda: moved.append(alice.room.name))
        alice_sid = alice.room.local_participant.sid
        heard_from_bob = len(alice.levels)

        move = api.MoveParticipantRequest(room=clients.room, identity="alice", destination_room=destination)
        await lkapi.room.move_participant(move)

        await eventually(lambda: moved == [destination], "alice's SDK to report the move")
        await eventually(lambda: carol.saw("participant_disconnected"), "carol to see alice leave")
        await eventually(lambda: "alice" in bob.room.remote_participants, "bob to see alice arrive")
        await eventually(
            lambda: set(alice.room.remote_participants) == {"bob"}, "alice to see bob only, not carol"
        )
        assert alice.room.local_participant.sid == alice_sid, "the same participant, moved"
        await eventually(
            lambda: len(bob.levels) >= 50 and np.mean(bob.levels[-25:]) > 4000, "bob to hear alice"
        )
        await eventually(
            lambda: len(alice.levels) > heard_from_bob + 50 and np.mean(alice.levels[-25:]) > 4000,
            "alice to hear bob",
        )
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=destination))
        assert {p.identity for p in listed.participants} == {"alice", "bob"}
        [moved_info] = [p for p in listed.participants if p.identity == "alice"]
        assert moved_info.sid == alice_sid and len(moved_info.tracks) == 1
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=clients.room))
        assert [p.identity for p in listed.participants] == ["carol"]

        # Refusals, in the Twirp style of the rest.
        back = api.MoveParticipantRequest(room=destination, identity="alice", destination_room=destination)
        with pytest.raises(api.TwirpError) as same:
            await lkapi.room.move_participant(back)
        assert same.value.code == "invalid_argument"
        nowhere = api.MoveParticipantRequest(room=destination, identity="alice", destination_room="no-room")
        with pytest.raises(api.TwirpError) as missing:
            await lkapi.room.move_participant(nowhere)
        assert missing.value.code == "not_found"
        token = server.token(room_admin=True, room=destination)  # no destinationRoom grant
        status, body = await twirp_json(
            server,
            "MoveParticipant",
            {"room": destination, "identity": "alice", "destination_room": clients.room},
            token,
        )
        assert status == 403 and body["code"] == "permission_denied"

        # And back, with the Node server SDK (JSON): carol sees her again, and hears her.
        carol_heard = len(carol.levels)
        env = {"SCENARIO_ROOM": destination, "SCENARIO_DESTINATION": clients.room}
        node = await run_scenario(server, "move-participant", SCENARIO_IDENTITY="alice", **env)
        assert node["result"]["ok"] is True, node
        await eventually(lambda: moved == [destination, clients.room], "alice's SDK to report the way back")
        await eventually(lambda: set(alice.room.remote_participants) == {"carol"}, "alice to see carol")
        await eventually(
            lambda: len(carol.levels) > carol_heard + 50 and np.mean(carol.levels[-25:]) > 4000,
            "carol to hear alice again",
        )
    finally:
        await bob.close()


async def test_a_client_that_keeps_sending_malformed_frames_is_disconnected(
    server: Server, clients: Any
) -> None:
    alice = await clients("alice")
    session, ws = await raw_join(server, clients.room, "noisy")
    try:
        garbage = b"\xff\xff\xff\xff"
        for _ in range(MAX_BAD_FRAMES - 1):  # a run that stops short of the limit is forgiven…
            await ws.send_bytes(garbage)
        seen = await read_signal_until(ws, lambda r: r.WhichOneof("message") == "pong")
        assert all(r.WhichOneof("message") != "leave" for r in seen)
        for _ in range(MAX_BAD_FRAMES):  # …one that reaches it is not
            await ws.send_bytes(garbage)
        seen = await read_signal_until(ws, lambda r: r.WhichOneof("message") == "leave")
        assert seen[-1].leave.reason == models.STATE_MISMATCH
        closing = await asyncio.wait_for(ws.receive(), 10)
        while closing.type == aiohttp.WSMsgType.BINARY:
            closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await session.close()
    await eventually(lambda: alice.saw("participant_disconnected"), "alice to see the noisy client go")

    # The log says it once per run of bad frames, with the count, not once per frame.
    lines = [line for line in server.log().splitlines() if "identity=noisy" in line and "bad signal" in line]
    assert len(lines) == 4, lines
    assert f"count={MAX_BAD_FRAMES - 1}" in lines[1] and f"count={MAX_BAD_FRAMES}" in lines[3], lines


async def test_tracks_announced_but_never_sent_are_bounded(server: Server, clients: Any) -> None:
    session, ws = await raw_join(server, clients.room, "announcer")
    try:
        for n in range(33):
            request = signal.AddTrackRequest(cid=f"cid-{n}", name="mic", type=models.AUDIO)
            await ws.send_bytes(signal.SignalRequest(add_track=request).SerializeToString())
        seen = await read_signal_until(ws, lambda r: r.WhichOneof("message") == "request_response")
        published = [r.track_published.cid for r in seen if r.WhichOneof("message") == "track_published"]
        assert published == [f"cid-{n}" for n in range(32)]
        refusal = seen[-1].request_response
        assert refusal.reason == signal.RequestResponse.LIMIT_EXCEEDED and refusal.add_track.cid == "cid-32"
    finally:
        await session.close()


async def test_room_service_forwards_a_participant_into_another_room(
    server: Server, clients: Any, lkapi: api.LiveKitAPI
) -> None:
    """ForwardParticipant: the participant stays in its room and shows in another one too (kind detail
    FORWARDED), with its tracks; changes to it show there; removing it there, or its leaving, ends it."""
    alice, carol = await clients("alice"), await clients("carol")
    destination = f"{clients.room}-b"
    await lkapi.room.create_room(api.CreateRoomRequest(name=destination))
    bob = Client("bob")
    try:
        await bob.room.connect(server.ws_url, server.join_token(destination, "bob"))
        publication = await alice.publish_tone()
        await eventually(lambda: len(carol.levels) >= 50, "carol to hear alice")
        forward = api.ForwardParticipantRequest(
            room=clients.room, identity="alice", destination_room=destination
        )
        await lkapi.room.forward_participant(forward)

        # The SDK reports the participant and each of its tracks as separate events: wait for both.
        def forwarded_tracks() -> list[str]:
            participant = bob.room.remote_participants.get("alice")
            return [] if participant is None else [p.sid for p in participant.track_publications.values()]

        await eventually(lambda: forwarded_tracks() == [publication.sid], "bob to see alice's forward")
        forwarded = bob.room.remote_participants["alice"]
        assert forwarded.sid.startswith("PA_") and forwarded.sid != alice.room.local_participant.sid
        await eventually(
            lambda: len(bob.levels) >= 50 and np.mean(bob.levels[-25:]) > 4000, "bob to hear alice"
        )
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=destination))
        infos = {p.identity: p for p in listed.participants}
        assert set(infos) == {"alice", "bob"} and len(infos["alice"].tracks) == 1
        assert api.ParticipantInfo.FORWARDED in infos["alice"].kind_details
        assert "alice" in carol.room.remote_participants, "alice is still in her own room"
        with pytest.raises(api.TwirpError) as twice:
            await lkapi.room.forward_participant(forward)
        assert twice.value.code == "already_exists"

        # Changes to alice show in the other room.
        await alice.room.local_participant.set_metadata("changed")
        await eventually(lambda: forwarded.metadata == "changed", "bob to see alice's new metadata")

        # Removed from the destination room: the forward ends there, alice stays where she is.
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=destination, identity="alice"))
        await eventually(lambda: "alice" not in bob.room.remote_participants, "the forward to end")
        assert not alice.saw("disconnected") and "alice" in carol.room.remote_participants

        # Forwarded again (with the Node server SDK, JSON), then alice leaves: she leaves both rooms.
        env = {"SCENARIO_ROOM": clients.room, "SCENARIO_DESTINATION": destination}
        node = await run_scenario(server, "forward-participant", SCENARIO_IDENTITY="alice", **env)
        assert node["result"]["ok"] is True, node
        await eventually(lambda: "alice" in bob.room.remote_participants, "bob to see alice again")
        await alice.room.disconnect()
        await eventually(lambda: "alice" not in bob.room.remote_participants, "alice's forward to leave")
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=destination))
        assert [p.identity for p in listed.participants] == ["bob"]

        same = api.ForwardParticipantRequest(room=destination, identity="bob", destination_room=destination)
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.room.forward_participant(same)
        assert refused.value.code == "invalid_argument"
    finally:
        await bob.close()
