"""The official Node `@livekit/rtc-node` SDK (unmodified) in Switchboard rooms: presence, audio, data, text,
RPC and subscription permissions (with a Python publisher).

Each test runs one scenario of `tests/node/rtc_scenarios.mjs` in a fresh room, with participant tokens
minted here (alice = A, bob = B, carol = C), and judges the one JSON object of observations it prints. The
audio and unpublish scenarios hold the participants in the room while this module cross-checks it through
RoomService ListParticipants (livekit-api); the permissions scenario holds them while the Python publisher
changes who may receive its track.
"""

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from livekit import api, rtc

from tests.conftest import Server
from tests.node_clients import NODE_DIR, node_or_fail, run_node
from tests.tone import publish_tone

SCRIPT = NODE_DIR / "rtc_scenarios.mjs"
RTC_SDK_DIR = NODE_DIR / "node_modules" / "@livekit" / "rtc-node"
CROSS_CHECK_DEADLINE = 15.0
IDENTITIES = {"A": "alice", "B": "bob", "C": "carol"}


def unique_room(scenario: str) -> str:
    return f"rtc-{scenario}-{uuid.uuid4().hex[:8]}"


def log_excerpt(server: Server, room: str, lines: int = 150) -> str:
    """The server log's last `lines` about `room`, and its problems (aiortc's debug chatter left out)."""
    problems = ("ERROR", "WARNING", "Traceback", "Error:", "Exception")
    relevant = [
        line
        for line in server.log().splitlines()
        if ("switchboard" in line and room in line) or any(word in line for word in problems)
    ]
    return "\n".join(relevant[-lines:])


async def run_rtc_scenario(
    server: Server,
    scenario: str,
    room: str,
    participants: str = "AB",
    *,
    while_connected: Callable[[], Awaitable[None]] | None = None,
    profiles: dict[str, dict[str, Any]] | None = None,
    e2ee_key: str = "",
) -> dict[str, Any]:
    """Run one scenario with a token per participant label and return its observations.

    With `while_connected`, the scenario holds (HOLD_FOR_STDIN) until that coroutine has finished; it is
    released even when the coroutine fails, whose error is raised once the scenario is over.
    """
    __tracebackhide__ = True
    node_or_fail()
    if not RTC_SDK_DIR.is_dir():
        pytest.fail(f"{RTC_SDK_DIR} is missing: run `make test` (it runs `npm ci` in tests/node)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["SWITCHBOARD_URL"] = server.ws_url
    for label in participants:
        profile = (profiles or {}).get(label)
        env[f"TOKEN_{label}"] = server.join_token(room, IDENTITIES[label], profile=profile)
    if while_connected is not None:
        env["HOLD_FOR_STDIN"] = "1"
    if e2ee_key:
        env["E2EE_KEY"] = e2ee_key
    run = await run_node(SCRIPT, scenario, env, lambda: log_excerpt(server, room), while_connected)
    if run.returncode != 0 or len(run.results) != 1:
        pytest.fail(
            f"rtc scenario {scenario!r} exited with {run.returncode}, {len(run.results)} results:\n"
            f"{chr(10).join(run.other_output)}\n--- stderr ---\n{run.stderr}\n"
            f"--- server log ---\n{log_excerpt(server, room)}"
        )
    [result] = run.results
    if "unexpectedError" in result:
        pytest.fail(
            f"rtc scenario {scenario!r} failed: {result['unexpectedError']}\n{result.get('stack')}\n"
            f"--- observed so far ---\n{json.dumps(result.get('partial'), indent=1)}\n"
            f"--- SDK log ---\n{chr(10).join(run.other_output[-30:])}\n--- stderr ---\n{run.stderr[-3000:]}\n"
            f"--- server log ---\n{log_excerpt(server, room)}"
        )
    assert result["scenario"] == scenario
    if run.held_error is not None:
        raise AssertionError(
            f"the check made while {scenario!r} was connected failed: {run.held_error!r}\n"
            f"--- scenario observations ---\n{json.dumps(result)[:6000]}\n"
            f"--- server log ---\n{log_excerpt(server, room)}"
        ) from run.held_error
    return result


def assert_participant(described: dict[str, Any], identity: str) -> str:
    assert described["identity"] == identity, described
    sid: str = described["sid"]
    assert sid.startswith("PA_"), described
    return sid


def texts(seen: dict[str, Any]) -> list[str]:
    return [packet["text"] for packet in seen["data"]]


async def test_participants_see_each_other_and_leave(server: Server) -> None:
    room = unique_room("presence")
    profile = {"name": "Alice A.", "metadata": "alice-meta", "attributes": {"team": "red"}}
    result = await run_rtc_scenario(server, "presence", room, profiles={"A": profile})
    a, b = result["a"], result["b"]

    a_sid = assert_participant(a["local"], "alice")
    b_sid = assert_participant(b["local"], "bob")
    assert a_sid != b_sid
    assert a["connectMs"] < 5000 and b["connectMs"] < 5000, (a["connectMs"], b["connectMs"])

    # A was alone when it joined; B arrived as a participantConnected event.
    assert a["remotesAtConnect"] == []
    assert [(p["identity"], p["sid"]) for p in a["connected"]] == [("bob", b_sid)]
    # B learned about A from its JoinResponse: A is in remoteParticipants as soon as connect() returns.
    assert [(p["identity"], p["sid"]) for p in b["remotesAtConnect"]] == [("alice", a_sid)]
    assert result["aSeesB"] == {"identity": "bob", "sid": b_sid}
    assert result["bSeesA"] == {"identity": "alice", "sid": a_sid}

    # A leaves: B gets participantDisconnected for A, once, and A is no longer among B's participants.
    assert [(p["identity"], p["sid"]) for p in b["disconnected"]] == [("alice", a_sid)]
    # … with her name, metadata and attributes still on it (the leave update carries her full info).
    [gone] = b["disconnected"]
    assert (gone["name"], gone["metadata"], gone["attributes"]) == ("Alice A.", "alice-meta", {"team": "red"})
    assert result["bRemotesAfterLeave"] == []
    assert result["leaveNoticedMs"] < 5000, result["leaveNoticedMs"]
    assert a["disconnectedReason"] == "CLIENT_INITIATED"
    assert a["disconnected"] == []

    # The server agrees: once both have left, the room has no participants.
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
        deadline = time.monotonic() + 10
        while True:
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            if not listed.participants or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert [p.identity for p in listed.participants] == []


async def test_audio_is_relayed_and_visible_through_room_service(server: Server) -> None:
    room = unique_room("audio")
    cross_check: dict[str, Any] = {}

    async def list_while_connected() -> None:
        """Poll ListParticipants until it shows both participants and A's published microphone track."""
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            deadline = time.monotonic() + CROSS_CHECK_DEADLINE
            while True:
                listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
                by_identity = {p.identity: p for p in listed.participants}
                cross_check["participants"] = by_identity
                alice = by_identity.get("alice")
                if set(by_identity) == {"alice", "bob"} and alice is not None and alice.tracks:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"ListParticipants never showed alice's track and bob: {listed}")
                await asyncio.sleep(0.05)

    result = await run_rtc_scenario(server, "audio", room, while_connected=list_while_connected)
    a, b = result["a"], result["b"]
    a_sid = assert_participant(a["local"], "alice")
    b_sid = assert_participant(b["local"], "bob")

    # A's publication, as A and B see it.
    published = result["published"]
    track_sid = published["sid"]
    assert track_sid.startswith("TR_"), published
    assert (published["kind"], published["source"], published["name"]) == (
        "KIND_AUDIO",
        "SOURCE_MICROPHONE",
        "tone",
    )
    assert result["remotePublication"]["sid"] == track_sid
    assert result["remotePublication"]["mimeType"] == "audio/opus"
    [subscribed] = b["subscribed"]
    assert subscribed["from"] == "alice"
    assert (subscribed["sid"], subscribed["kind"], subscribed["source"]) == (
        track_sid,
        "KIND_AUDIO",
        "SOURCE_MICROPHONE",
    )
    assert result["subscribedAfterPublishMs"] < 5000, result["subscribedAfterPublishMs"]

    # B hears the 440 Hz tone (amplitude 8000: RMS ≈ 5657) through the server, not silence.
    assert result["toneError"] is None
    assert_tone(result["audio"], 50)

    # RoomService, asked while both were connected, agrees with what the clients saw.
    participants = cross_check["participants"]
    assert set(participants) == {"alice", "bob"}
    alice, bob = participants["alice"], participants["bob"]
    assert (alice.sid, bob.sid) == (a_sid, b_sid)
    assert alice.state == bob.state == api.ParticipantInfo.ACTIVE
    [track] = alice.tracks
    assert track.sid == track_sid
    assert track.type == api.TrackType.AUDIO
    assert track.source == api.TrackSource.MICROPHONE
    assert track.name == "tone"
    assert track.mime_type == "audio/opus"
    assert list(bob.tracks) == []
    assert result["hold"]["aRemotes"] == ["bob"] and result["hold"]["bRemotes"] == ["alice"]

    # A leaves: B loses the track and the participant.
    assert [(p["identity"], p["sid"]) for p in b["disconnected"]] == [("alice", a_sid)]
    assert [u["sid"] for u in b["unsubscribed"]] == [track_sid]
    assert result["bRemotesAfterLeave"] == []
    assert result["leaveNoticedMs"] < 5000, result["leaveNoticedMs"]


def assert_tone(audio: dict[str, Any], frames: int) -> None:
    """`audio` (what one subscriber read) is the publisher's 440 Hz tone: RMS ≈ 5657, no dropouts."""
    assert audio["sampleRates"] == [48000] and audio["channels"] == [1], audio
    assert audio["audibleFrames"] >= frames, audio
    assert 4000 < audio["rms"] < 7000, audio
    assert audio["frequencyHz"] == 440, audio
    assert audio["unsteadyFrames"] <= 5, audio


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "e2ee"])
async def test_audio_fans_out_to_a_late_joiner(server: Server, encrypted: bool) -> None:
    """Also end-to-end encrypted: the relay passes the encrypted frames untouched, and the receivers,
    who have the key, decrypt the tone."""
    key = "shared" if encrypted else ""
    result = await run_rtc_scenario(server, "audio-fanout", unique_room("fanout"), "ABC", e2ee_key=key)
    track_sid = result["trackSid"]
    assert track_sid.startswith("TR_")
    assert result["toneError"] is None
    # B was in the room when A published; C joined afterwards and was subscribed to the existing track.
    for seen in (result["b"], result["c"]):
        [subscribed] = seen["subscribed"]
        assert (subscribed["from"], subscribed["sid"], subscribed["source"]) == (
            "alice",
            track_sid,
            "SOURCE_MICROPHONE",
        )
        # The receivers know it is encrypted (from the track's info the server relays), so they decrypt.
        assert subscribed["encryptionType"] == ("GCM" if encrypted else "NONE"), subscribed
    assert_tone(result["bAudio"], 50)
    assert_tone(result["cAudio"], 50)


async def test_unpublished_track_is_withdrawn(server: Server) -> None:
    room = unique_room("unpublish")
    listed_tracks: list[Any] = []

    async def list_after_unpublish() -> None:
        """Poll ListParticipants until alice has published and then withdrawn her track (or a deadline)."""
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            deadline = time.monotonic() + 6
            seen_track = False
            while time.monotonic() < deadline:
                listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
                alice = next((p for p in listed.participants if p.identity == "alice"), None)
                listed_tracks[:] = list(alice.tracks) if alice else []
                seen_track = seen_track or bool(listed_tracks)
                if seen_track and not listed_tracks:
                    return
                await asyncio.sleep(0.05)

    result = await run_rtc_scenario(server, "unpublish", room, while_connected=list_after_unpublish)
    track_sid = result["trackSid"]
    assert track_sid.startswith("TR_")
    assert result["aPublicationsAfterUnpublish"] == []  # A's SDK did unpublish
    problems = []
    if result["unpublishNoticedMs"] is None:
        problems.append(f"B got no trackUnpublished for {track_sid} within 5 s")
    if result["bPublicationsAfterUnpublish"]:
        problems.append(f"B still lists A's publications {result['bPublicationsAfterUnpublish']}")
    unsubscribed = result["bBeforeLeave"]["unsubscribed"]
    if [u["sid"] for u in unsubscribed] != [track_sid]:
        problems.append(f"B's trackUnsubscribed events while A was still there: {unsubscribed}")
    if listed_tracks:
        problems.append(f"ListParticipants still shows alice's tracks {[t.sid for t in listed_tracks]}")
    assert not problems, "; ".join(problems)


async def test_a_track_published_again_is_heard_every_time(server: Server) -> None:
    room = unique_room("republish")
    result = await run_rtc_scenario(server, "republish", room)
    rounds = result["rounds"]
    assert len(rounds) == 4 and len({r["trackSid"] for r in rounds}) == 4, rounds
    for round_ in rounds:  # each new track of A is heard by B, at the tone's level (≈5657)
        assert round_["audibleFrames"] == 50 and round_["rms"] > 4000, rounds


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "e2ee"])
async def test_data_packets_between_participants(server: Server, encrypted: bool) -> None:
    room = unique_room("data")
    result = await run_rtc_scenario(server, "data", room, "ABC", e2ee_key="shared" if encrypted else "")
    a, b, c = result["a"], result["b"], result["c"]
    # End-to-end encrypted, every packet is an encrypted_packet (rtc-node's dataReceived does not say so;
    # a server that drops them fails this test): forwarded, routed and stamped all the same.
    assert result["identities"] == {"a": "alice", "b": "bob", "c": "carol"}

    def received(seen: dict[str, Any], text: str) -> list[dict[str, Any]]:
        return [{k: p[k] for k in ("from", "kind", "topic")} for p in seen["data"] if p["text"] == text]

    # A's reliable broadcast reaches B and C once each, stamped with A's identity, kind and topic kept.
    for seen in (b, c):
        assert received(seen, "a-to-all") == [{"from": "alice", "kind": "KIND_RELIABLE", "topic": "greeting"}]
    # Nobody hears their own packets.
    assert not [t for t in texts(a) if t.startswith("a-")]
    assert not [t for t in texts(b) if t.startswith("b-")]
    assert not [t for t in texts(c) if t.startswith("c-")]

    # B's lossy packet reaches A (after at most a few tries), as lossy.
    lossy = [p for p in a["data"] if p["text"].startswith("b-lossy-")]
    assert lossy, f"A never got a lossy packet from B in {result['lossyAttempts']} attempts"
    assert {(p["from"], p["kind"], p["topic"]) for p in lossy} == {("bob", "KIND_LOSSY", "lossy")}

    # Destination identities: only the destination receives.
    assert received(c, "a-to-c-only") == [{"from": "alice", "kind": "KIND_RELIABLE", "topic": "private"}]
    assert received(b, "a-to-c-only") == []
    assert received(b, "c-to-b-only") == [{"from": "carol", "kind": "KIND_RELIABLE", "topic": None}]
    assert received(a, "c-to-b-only") == []

    # One sender's reliable packets keep their order.
    c_from_a = [p["text"] for p in c["data"] if p["from"] == "alice"]
    assert c_from_a == ["a-to-all", "a-to-c-only", "a-fence"]
    b_from_a = [p["text"] for p in b["data"] if p["from"] == "alice"]
    assert b_from_a == ["a-to-all", "a-fence"]


async def test_text_streams(server: Server) -> None:
    room = unique_room("text")
    result = await run_rtc_scenario(server, "text", room)
    assert result["identities"] == {"a": "alice", "b": "bob"}
    assert result["streamsReceived"] == 3

    short = result["short"]
    assert (short["from"], short["topic"], short["error"]) == ("alice", "lk.chat", None)
    assert short["text"] == short["sent"] == "hello from A 👋"
    assert short["attributes"] == {"kind": "short"}

    long = result["long"]  # ≈50 kB: several chunks on the wire
    assert (long["from"], long["topic"], long["error"]) == ("alice", "lk.chat", None)
    assert long["sentLength"] > 40_000
    assert long["receivedLength"] == long["sentLength"]
    assert long["sentMatches"] is True
    assert long["attributes"] == {"kind": "long"}

    streamed = result["streamed"]  # streamText: a header, a chunk per write, a trailer
    assert (streamed["from"], streamed["topic"], streamed["error"]) == ("alice", "lk.chat", None)
    assert streamed["text"] == streamed["sent"] == "part one, part two"


async def test_rpc_between_participants_both_ways(server: Server) -> None:
    """performRpc / registerRpcMethod: answers, the handler's own errors, unknown methods, timeouts and a
    destination that is not there, as rtc-node reports them. (A callee that leaves mid-call is left to the
    Python test: rtc-node 1.1.0's Rust core does not fail such a call when the callee leaves.)"""
    result = await run_rtc_scenario(server, "rpc", unique_room("rpc"))
    outcomes = {(c["caller"], c["method"]): {k: v for k, v in c.items() if k in ("payload", "error")}
                for c in result["calls"]}  # fmt: skip
    for caller, callee in (("bob", "alice"), ("alice", "bob")):
        assert outcomes[caller, "greet"] == {"payload": f"hello {caller}, you sent 42"}, outcomes
        refused = {"code": 2001, "message": "refused", "data": "on purpose"}
        assert outcomes[caller, "refuse"] == {"error": refused}, outcomes
        assert outcomes[caller, "missing"]["error"]["code"] == 1400, outcomes  # UNSUPPORTED_METHOD
        assert outcomes[caller, "slow"]["error"]["code"] == 1502, outcomes  # RESPONSE_TIMEOUT
        assert result["invoked"][callee] == ["greet", "refuse", "slow"], result["invoked"]
    assert result["toNobody"]["error"]["code"] == 1501, result["toNobody"]  # CONNECTION_TIMEOUT


async def test_track_subscription_permissions_are_enforced(server: Server) -> None:
    """A Python publisher allows only bob, then only carol (rtc-node 1.1.0 has no API to set them): the
    rtc-node subscribers receive the track exactly while they are allowed. (rtc-node shows no event for
    the `subscription_permission_update` that tells them why; the Python test checks it on the wire.)"""
    room = unique_room("permissions")
    alice = rtc.Room()
    ready = asyncio.Event()
    alice.on("data_received", lambda packet: ready.set() if packet.data == b"ready" else None)
    await alice.connect(server.ws_url, server.join_token(room, "alice"))
    only = [rtc.ParticipantTrackPermission(participant_identity="bob", allow_all=True)]
    alice.local_participant.set_track_subscription_permissions(
        allow_all_participants=False, participant_permissions=only
    )
    publication, player = await publish_tone(alice)

    async def let_carol_in_and_bob_out() -> None:
        await asyncio.wait_for(ready.wait(), CROSS_CHECK_DEADLINE)
        only = [rtc.ParticipantTrackPermission(participant_identity="carol", allow_all=True)]
        alice.local_participant.set_track_subscription_permissions(
            allow_all_participants=False, participant_permissions=only
        )

    try:
        result = await run_rtc_scenario(
            server, "permissions", room, "BC", while_connected=let_carol_in_and_bob_out
        )
    finally:
        player.cancel()
        await alice.disconnect()
    assert result["publisher"] == "alice"
    # Heard, at the tone's level (≈5657); its steadiness is not the point (and the Python publisher, which
    # shares a process with this test, may stutter on a loaded machine).
    for heard in (result["bBefore"], result["cAfter"]):
        assert heard["audibleFrames"] == 50 and 4000 < heard["rms"] < 7000, heard
        assert heard["frequencyHz"] == 440, heard
    assert result["cSubscribedBefore"] == 0, "carol was not allowed"
    assert [s["sid"] for s in result["c"]["subscribed"]] == [publication.sid]
    b_after = result["bAfter"]  # one recording of bob's track, from before the change to after it
    assert b_after["audibleBefore"] >= 50, b_after
    assert b_after["audibleInWindow"] == 0, f"bob still hears alice: {b_after}"
