"""The official browser SDK `livekit-client` (unmodified) in headless Debian Chromium, against a real server.

`tests/node/browser_scenario.mjs` drives Chromium with playwright-core and prints what the page observed as
one JSON line. The page comes from a small HTTP server in this process that serves only the SDK's UMD build,
so the browser talks to Switchboard cross-origin, as a web app does. The other participant is the official
Python rtc SDK, in this process.
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from tests.browser import JOIN_TIMEOUT, STEP_TIMEOUT, BrowserScenario, served_page, toolchain_or_fail
from tests.conftest import Server
from tests.polling import eventually
from tests.rpc_methods import REFUSAL, RESPONSE_TIMEOUT, SLOW_SECONDS, greeting, register_rpc_methods
from tests.tone import publish_tone

TONE_HZ = 440
# A sine at WebAudio gain 0.25 is 0.25 * 32767 / sqrt(2) ≈ 5790 RMS in int16; Opus keeps it within a few %.
EXPECTED_RMS = 0.25 * 32767 / np.sqrt(2)
SILENCE_RMS = 100.0
MIN_FRAMES = 50
NO_AUDIO_WINDOW = 1.0


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    async with served_page() as url:
        yield url


class PythonPeer:
    """The official Python rtc SDK in a room: records what it sees of the browser participant."""

    def __init__(self, browser_identity: str) -> None:
        self.room = rtc.Room()
        self.browser = browser_identity
        self.connected: dict[str, Any] = {}
        self.disconnected = asyncio.Event()
        self.disconnected_at = 0.0
        self.subscribed: dict[str, Any] = {}
        self.frames: list[np.ndarray] = []
        self.first_audio_at = 0.0
        self.enough_audio = asyncio.Event()
        self.data: list[rtc.DataPacket] = []
        self.texts: list[dict[str, Any]] = []
        self.got_data = asyncio.Event()
        self.got_text = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._register()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _register(self) -> None:
        room = self.room

        @room.on("participant_connected")
        def on_connected(participant: rtc.RemoteParticipant) -> None:
            self.connected[participant.identity] = {"sid": participant.sid, "kind": participant.kind}

        @room.on("participant_disconnected")
        def on_disconnected(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == self.browser:
                self.disconnected_at = time.monotonic()
                self.disconnected.set()

        @room.on("track_subscribed")
        def on_track(
            track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
        ) -> None:
            self.subscribed = {
                "identity": participant.identity,
                "kind": track.kind,
                "sid": publication.sid,
                "source": publication.source,
                "name": publication.name,
            }
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self._spawn(self._read(track))

        @room.on("data_received")
        def on_data(packet: rtc.DataPacket) -> None:
            self.data.append(packet)
            self.got_data.set()

        def on_text(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                text = await reader.read_all()
                self.texts.append({"text": text, "from": sender, "topic": reader.info.topic})
                self.got_text.set()

            self._spawn(read())

        room.register_text_stream_handler("lk.chat", on_text)

    async def _read(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                if not self.frames:
                    self.first_audio_at = time.monotonic()
                self.frames.append(samples)
                if len(self.frames) >= 2 * MIN_FRAMES:
                    self.enough_audio.set()
        finally:
            await stream.aclose()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()


def tone(frames: list[np.ndarray]) -> tuple[float, float]:
    """RMS and dominant frequency of the last MIN_FRAMES frames (the first may still be ramping up)."""
    samples = np.concatenate(frames[-MIN_FRAMES:])
    rms = float(np.sqrt(np.mean(samples**2)))
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = float(np.fft.rfftfreq(len(samples), 1 / 48000)[int(np.argmax(spectrum))])
    return rms, peak


def rtc_steps(network: list[dict[str, Any]]) -> list[str]:
    """The signalling requests the page made, in order, e.g. ['ws /rtc/v1', 'GET /rtc/v1/validate 404']."""
    steps = []
    for entry in network:
        if entry["type"] == "websocket":
            steps.append(f"ws {entry['path']}")
        elif entry["path"].startswith("/rtc"):
            outcome = entry["status"] if entry["status"] is not None else f"failed ({entry.get('failure')})"
            steps.append(f"GET {entry['path']} {outcome}")
    return steps


async def test_browser_and_python_share_a_room(server: Server, page_url: str) -> None:
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    peer = PythonPeer("browser")
    browser = BrowserScenario(
        server,
        page_url,
        "room",
        server.join_token(room_name, "browser", can_publish=True, can_subscribe=True),
        PEER_IDENTITY="py",
    )
    try:
        await peer.room.connect(server.ws_url, server.join_token(room_name, "py"))
        await browser.start()

        # Python's side: the browser joins, publishes its oscillator, sends data and a chat message.
        await browser.wait_for(peer.got_data, "the browser's data packet", JOIN_TIMEOUT)
        await browser.wait_for(peer.got_text, "the browser's lk.chat text stream")
        await browser.wait_for(peer.enough_audio, f"{2 * MIN_FRAMES} audio frames from the browser")
        await peer.room.local_participant.publish_data(b"hello from python", reliable=True, topic="greeting")
        await peer.room.local_participant.send_text(
            "transcribed words", topic="lk.transcription", attributes={"lk.transcription_final": "true"}
        )
        audio_frames = len(peer.frames)
        rms, peak = tone(peer.frames)
        browser.tell("leave")
        told_at = time.monotonic()
        await browser.wait_for(peer.disconnected, "participant_disconnected for the browser")
        result = await browser.result()
    finally:
        await browser.kill()
        await peer.close()

    joined, left = result["joined"], result["left"]
    timings = {
        "launch_ms": result["launchMs"],
        "connect_ms": joined["connectMs"],
        "published_ms": joined["published"]["at"],
        "page_load_ms": result["pageLoadMs"],
        "first_audio_s": round(peer.first_audio_at - browser.started, 2),
        "leave_to_python_ms": round(1000 * (peer.disconnected_at - told_at)),
        "total_ms": result["totalMs"],
    }
    print(f"\nbrowser room timings: {timings}; chromium {result['browserVersion']}, rms {rms:.0f}, {peak} Hz")

    # Connect: v1 first, its validate answers 404 (with CORS, or fetch would throw), then v0 /rtc.
    steps = rtc_steps(result["network"])
    assert steps == ["ws /rtc/v1", "GET /rtc/v1/validate 404", "ws /rtc"], steps
    validate = next(e for e in result["network"] if e["path"] == "/rtc/v1/validate")
    assert validate["cors"] == "*", validate
    assert joined["sdkVersion"] == "2.23.0"
    assert joined["state"] == "connected"
    assert joined["localIdentity"] == "browser" and joined["localSid"].startswith("PA_")
    assert joined["roomName"] == room_name

    # Each side sees the other.
    assert [p["identity"] for p in joined["remoteAtConnect"]] == ["py"], joined["remoteAtConnect"]
    assert joined["remote"][0]["sid"] == peer.room.local_participant.sid
    assert peer.connected.get("browser", {}).get("sid") == joined["localSid"], peer.connected
    assert peer.connected["browser"]["kind"] == rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD

    # Audio: the WebAudio oscillator published as the microphone, relayed to Python, heard as 440 Hz.
    assert joined["audioContextState"] == "running"
    published = joined["published"]
    assert published["sid"].startswith("TR_") and published["source"] == "microphone", published
    assert peer.subscribed["identity"] == "browser" and peer.subscribed["sid"] == published["sid"]
    assert peer.subscribed["kind"] == rtc.TrackKind.KIND_AUDIO
    assert peer.subscribed["source"] == rtc.TrackSource.SOURCE_MICROPHONE
    assert peer.subscribed["name"] == "oscillator"
    assert audio_frames >= 2 * MIN_FRAMES
    assert rms > 20 * SILENCE_RMS, f"the relayed audio is silent: RMS {rms:.0f}"
    assert 0.6 * EXPECTED_RMS < rms < 1.4 * EXPECTED_RMS, f"RMS {rms:.0f}, expected ≈{EXPECTED_RMS:.0f}"
    assert abs(peak - TONE_HZ) <= 10, f"dominant frequency {peak} Hz, expected {TONE_HZ} Hz"

    # Data, browser → Python: identity stamped by the server, topic and payload kept.
    [packet] = peer.data
    assert packet.data == b"hello from the browser"
    assert packet.participant is not None and packet.participant.identity == "browser"
    assert packet.topic == "greeting" and packet.kind == rtc.DataPacketKind.KIND_RELIABLE
    # Text stream, browser → Python, on lk.chat.
    assert peer.texts == [{"text": "hi", "from": "browser", "topic": "lk.chat"}]
    assert joined["textSent"]["topic"] == "lk.chat"

    # Python → browser: the data packet and the lk.transcription text stream (attributes kept).
    assert [(d["text"], d["from"], d["topic"]) for d in left["dataReceived"]] == [
        ("hello from python", "py", "greeting")
    ], left["dataReceived"]
    [text] = left["textReceived"]
    assert (text["text"], text["from"], text["topic"]) == ("transcribed words", "py", "lk.transcription")
    assert text["attributes"] == {"lk.transcription_final": "true"}

    # Leave: a clean client-initiated disconnect, without reconnect attempts on the way.
    assert result["leaveSignal"] == "leave"
    assert left["stateBeforeLeave"] == "connected" and left["finalState"] == "disconnected"
    # The only events: the final Disconnected (no reconnect attempts, and Python was there all along).
    assert [(e["event"], e.get("reason")) for e in left["events"]] == [
        ("disconnected", "CLIENT_INITIATED")
    ], left["events"]
    assert "Traceback" not in server.log(), server.log()


async def test_browser_is_told_about_track_permissions_and_who_left(server: Server, page_url: str) -> None:
    """livekit-client sees a publisher's subscription permissions (not allowed, then allowed with
    TrackSubscriptionPermissionChanged, and subscribed; then not allowed again, and unsubscribed) and the
    leaving publisher's name and metadata."""
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    profile = {"name": "Py Thon", "metadata": "py-meta", "attributes": {"role": "host"}}
    publisher = rtc.Room()
    first_subscriber = asyncio.Event()
    browser_here = asyncio.Event()
    publisher.on("local_track_subscribed", lambda *_: first_subscriber.set())
    # The browser says with data packets when it is connected (its room relays no events before) and when
    # it has been unsubscribed.
    browser_unsubscribed = asyncio.Event()
    signals = {b"watching": browser_here}

    @publisher.on("data_received")
    def on_data(packet: rtc.DataPacket) -> None:
        if (signal := signals.get(packet.data)) is not None:
            signal.set()

    browser = BrowserScenario(
        server, page_url, "watch", server.join_token(room_name, "browser"), PEER_IDENTITY="py"
    )
    tone_task: asyncio.Task[None] | None = None
    try:
        await publisher.connect(server.ws_url, server.join_token(room_name, "py", profile=profile))
        local = publisher.local_participant
        local.set_track_subscription_permissions(allow_all_participants=False)  # nobody, for now
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await local.publish_track(track, options)

        async def play() -> None:
            silence = rtc.AudioFrame(bytes(960), 48000, 1, 480)
            while True:
                await source.capture_frame(silence)

        tone_task = asyncio.ensure_future(play())
        signals[f"unsubscribed:{publication.sid}".encode()] = browser_unsubscribed
        await browser.start()
        await browser.wait_for(browser_here, "the browser to join", JOIN_TIMEOUT)
        assert not first_subscriber.is_set(), "the browser is not allowed yet"
        local.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(participant_identity="browser", allow_all=True)
            ],
        )
        await browser.wait_for(first_subscriber, "the browser, now allowed, to subscribe")
        local.set_track_subscription_permissions(allow_all_participants=False)  # nobody again
        await browser.wait_for(browser_unsubscribed, "the browser, no longer allowed, to be unsubscribed")
        await publisher.disconnect()
        browser.tell("leave")
        result = await browser.result()
    finally:
        if tone_task is not None:
            tone_task.cancel()
        await browser.kill()
        with contextlib.suppress(Exception):
            await publisher.disconnect()

    watched = result["watched"]
    # Not allowed when it joined (livekit-client's room relays no events while it connects, so this is
    # read from the publication), then allowed (the event), then subscribed.
    initial = [(p["identity"], p["sid"], p["status"]) for p in result["joined"]["permissionsAfterConnect"]]
    assert initial == [("py", publication.sid, "not_allowed")], result["joined"]
    statuses = [(p["identity"], p["sid"], p["status"]) for p in watched["permissions"]]
    allowed, revoked = ("py", publication.sid, "allowed"), ("py", publication.sid, "not_allowed")
    assert statuses[-2:] == [allowed, revoked], watched
    assert statuses[:-2] in ([], [revoked]), watched  # if it was connected
    assert [(s["identity"], s["sid"]) for s in watched["subscribed"]] == [("py", publication.sid)], watched
    assert [(s["identity"], s["sid"]) for s in watched["unsubscribed"]] == [("py", publication.sid)], watched
    [left] = watched["left"]
    assert (left["identity"], left["name"], left["metadata"]) == ("py", "Py Thon", "py-meta"), left
    assert left["attributes"] == {"role": "host"}, left


async def test_a_browser_publisher_chooses_who_receives_its_track(server: Server, page_url: str) -> None:
    """livekit-client's setTrackSubscriptionPermissions: the browser lets only `first` receive its
    oscillator, then only `second`; each Python subscriber receives it exactly while it is allowed."""
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    first, second = PythonPeer("browser"), PythonPeer("browser")
    browser = BrowserScenario(
        server,
        page_url,
        "guard",
        server.join_token(room_name, "browser"),
        PEER_IDENTITY="first",
        SECOND_PEER_IDENTITY="second",
    )

    def audible(peer: PythonPeer) -> bool:
        return len(peer.frames) >= MIN_FRAMES and tone(peer.frames)[0] > 20 * SILENCE_RMS

    async def stopped_hearing(peer: PythonPeer) -> bool:
        before = len(peer.frames)
        await asyncio.sleep(0.2)
        return len(peer.frames) == before or tone(peer.frames[-5:])[0] < SILENCE_RMS

    try:
        for peer, identity in ((first, "first"), (second, "second")):
            await peer.room.connect(server.ws_url, server.join_token(room_name, identity))
        await browser.start()
        await browser.wait_for(first.enough_audio, "first, who is allowed, to hear the browser", JOIN_TIMEOUT)
        assert audible(first), tone(first.frames)
        assert not second.subscribed, "second is not allowed"

        browser.tell("swap")
        await browser.wait_for(second.enough_audio, "second, now allowed, to hear the browser")
        assert audible(second), tone(second.frames)
        await eventually(lambda: stopped_hearing(first), "first to stop hearing the browser")
        heard = len(first.frames)
        await asyncio.sleep(NO_AUDIO_WINDOW)  # a window in which nothing audible may arrive
        late = first.frames[heard:]
        assert not late or tone(late)[0] < SILENCE_RMS, f"first still hears the browser: {tone(late)}"
        browser.tell("leave")
        result = await browser.result()
    finally:
        await browser.kill()
        for peer in (first, second):
            await peer.close()
    assert first.subscribed["sid"] == second.subscribed["sid"] == result["published"]["sid"]


async def test_browser_hears_a_track_published_again_every_time(server: Server, page_url: str) -> None:
    """A Python publisher unpublishes and publishes again, three times over: livekit-client receives each
    new track (its reused transceiver starts receiving again) and decodes audio from it."""
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    publisher = rtc.Room()
    heard: asyncio.Queue[str] = asyncio.Queue()
    publisher.on("data_received", lambda packet: heard.put_nowait(packet.data.decode()))
    browser = BrowserScenario(
        server, page_url, "listen", server.join_token(room_name, "browser"), PEER_IDENTITY="py"
    )
    sids: list[str] = []
    try:
        await publisher.connect(server.ws_url, server.join_token(room_name, "py"))
        await browser.start()
        for _ in range(4):
            publication, player = await publish_tone(publisher)
            sids.append(publication.sid)
            try:
                said = await asyncio.wait_for(heard.get(), JOIN_TIMEOUT)
            finally:
                player.cancel()
            assert said == f"heard:{publication.sid}"
            await publisher.local_participant.unpublish_track(publication.sid)
        browser.tell("leave")
        result = await browser.result()
    finally:
        await browser.kill()
        with contextlib.suppress(Exception):
            await publisher.disconnect()

    listened = result["listened"]["heard"]
    print(f"\nbrowser republish rounds: {listened}")
    assert [h["sid"] for h in listened] == sids, listened
    for round_ in listened:  # RTP reached the browser for every new track, and it played the tone from it
        assert round_["packetsReceived"] >= 100, listened
        # audioLevel is a fraction of full scale: the tone is 8000 / 32767 ≈ 0.24.
        assert round_["loudestAudioLevel"] > 0.1, listened


async def test_rpc_between_the_browser_and_python_both_ways(server: Server, page_url: str) -> None:
    """livekit-client's performRpc / registerRpcMethod against the Python SDK's, each calling the other:
    answers, the handler's own errors, unknown methods and response timeouts, as each SDK reports them."""
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    python = rtc.Room()
    ready = asyncio.Event()
    python.on("data_received", lambda packet: ready.set() if packet.data == b"rpc-ready" else None)
    browser = BrowserScenario(
        server,
        page_url,
        "rpc",
        server.join_token(room_name, "browser"),
        PEER_IDENTITY="py",
        RPC_RESPONSE_TIMEOUT_MS=str(int(RESPONSE_TIMEOUT * 1000)),
        RPC_SLOW_MS=str(int(SLOW_SECONDS * 1000)),
    )
    outcomes: dict[str, Any] = {}
    try:
        await python.connect(server.ws_url, server.join_token(room_name, "py"))
        invoked = register_rpc_methods(python.local_participant)
        await browser.start()
        await browser.wait_for(ready, "the browser to join and register its methods", JOIN_TIMEOUT)
        for method in ("greet", "refuse", "missing", "slow"):
            timeout = RESPONSE_TIMEOUT if method == "slow" else None
            try:
                outcomes[method] = await python.local_participant.perform_rpc(
                    destination_identity="browser", method=method, payload="42", response_timeout=timeout
                )
            except rtc.RpcError as error:
                outcomes[method] = (error.code, error.message, error.data)
        browser.tell("leave")
        result = await browser.result()
    finally:
        await browser.kill()
        with contextlib.suppress(Exception):
            await python.disconnect()

    # Python called the browser.
    assert outcomes["greet"] == greeting("py", "42"), outcomes
    assert outcomes["refuse"] == REFUSAL, outcomes
    assert outcomes["missing"][0] == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, outcomes
    assert outcomes["slow"][0] == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, outcomes
    # The browser called Python.
    called = {c["method"]: c for c in result["called"]["calls"]}
    assert called["greet"]["payload"] == greeting("browser", "42"), called
    code, message, data = REFUSAL
    assert called["refuse"]["error"] == {"code": code, "message": message, "data": data}, called
    assert called["missing"]["error"]["code"] == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, called
    assert called["slow"]["error"]["code"] == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, called
    assert invoked == ["greet", "refuse", "slow"], "unknown methods reach no handler"


async def test_end_to_end_encryption_between_the_browser_and_python(server: Server, page_url: str) -> None:
    """livekit-client's shared-key E2EE (ExternalE2EEKeyProvider and its e2ee worker) and the Python
    SDK's (KeyProviderOptions.shared_key) on the two ends: audio and data, each way, are encrypted by the
    sender, passed through untouched, and decrypted by the receiver."""
    toolchain_or_fail()
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    key = "a passphrase only the participants know"
    peer = PythonPeer("browser")
    e2ee = rtc.E2EEOptions(key_provider_options=rtc.KeyProviderOptions(shared_key=key.encode()))
    browser = BrowserScenario(
        server, page_url, "e2ee", server.join_token(room_name, "browser"), PEER_IDENTITY="py", E2EE_KEY=key
    )
    player: asyncio.Task[None] | None = None
    try:
        await peer.room.connect(
            server.ws_url, server.join_token(room_name, "py"), rtc.RoomOptions(encryption=e2ee)
        )
        publication, player = await publish_tone(peer.room)
        await browser.start()
        await browser.wait_for(
            peer.enough_audio, f"{2 * MIN_FRAMES} audio frames from the browser", JOIN_TIMEOUT
        )
        # The browser sends its packet once published; if it does not arrive, what the browser saw says why.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.got_data.wait(), STEP_TIMEOUT)
        await peer.room.local_participant.publish_data(b"secret from python", reliable=True, topic="secret")
        rms, peak = tone(peer.frames)
        remote = peer.room.remote_participants["browser"].track_publications[peer.subscribed["sid"]]
        browser.tell("leave")
        result = await browser.result()
    finally:
        if player is not None:
            player.cancel()
        await browser.kill()
        await peer.close()

    joined = result["joined"]
    assert joined["supported"] and joined["e2eeEnabled"], joined
    assert joined["errors"] == [], joined
    # Browser → Python: announced as encrypted, and decrypted to the oscillator's tone and the packet.
    assert joined["published"] == {"sid": peer.subscribed["sid"], "encrypted": True}, joined
    assert remote.encryption_type == rtc.EncryptionType.GCM
    assert 0.6 * EXPECTED_RMS < rms < 1.4 * EXPECTED_RMS, f"RMS {rms:.0f}, expected ≈{EXPECTED_RMS:.0f}"
    assert abs(peak - TONE_HZ) <= 10, f"dominant frequency {peak} Hz, expected {TONE_HZ} Hz"
    assert len(peer.data) == 1, f"python received {peer.data}; the browser saw {joined}"
    [packet] = peer.data
    assert (packet.data, packet.topic) == (b"secret from the browser", "secret")
    assert packet.participant is not None and packet.participant.identity == "browser"
    # Python → browser: the same, the other way (audioLevel is measured on the decoded audio).
    heard = joined["heard"]
    assert heard["sid"] == publication.sid and heard["encrypted"] is True, heard
    assert heard["packetsReceived"] >= 100 and heard["loudestAudioLevel"] > 0.1, heard
    assert joined["dataReceived"] == [{"text": "secret from python", "from": "py", "topic": "secret"}], joined


async def test_browser_with_a_token_signed_by_another_secret_fails_fast(
    server: Server, page_url: str
) -> None:
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    bad_token = (
        api.AccessToken(server.api_key, "not-the-secret-of-this-server-at-all-000")
        .with_identity("intruder")
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )
    toolchain_or_fail()
    browser = BrowserScenario(server, page_url, "bad-token", bad_token)
    try:
        await browser.start()
        result = await browser.result()
    finally:
        await browser.kill()

    attempt = result["attempt"]
    print(f"\nbad token: {attempt['elapsedMs']} ms, error {attempt.get('error')}")
    assert attempt["connected"] is False, "a token signed by another secret must be refused"
    assert attempt["elapsedMs"] < 10_000, "the failure must come at once, not after a timeout"
    # v1 → 404 → v0, whose handshake is refused; the SDK then reads the reason from /rtc/validate, which
    # it can only do when that 401 carries CORS headers (else `fetch` throws: "server unreachable").
    steps = rtc_steps(result["network"])
    assert steps[:3] == ["ws /rtc/v1", "GET /rtc/v1/validate 404", "ws /rtc"], steps
    assert steps[3:] == ["GET /rtc/validate 401"], (
        f"the page could not read /rtc/validate's 401 (CORS headers missing?): {steps}\n"
        f"error: {attempt['error']}\nconsole: {json.dumps(result['consoleErrors'], indent=1)}"
    )
    validate = next(e for e in result["network"] if e["path"] == "/rtc/validate")
    assert validate["cors"] == "*", validate
    error = attempt["error"]
    assert error["isConnectionError"] and error["name"] == "ConnectionError", error
    # (`reasonName` stays ServerUnreachable: livekit-client's Room.connect copies only reason and status.)
    assert error["reasonByEnum"] == "NotAllowed" and error["status"] == 401, error
    assert "invalid token" in error["message"].lower(), error
    assert "identity=intruder" not in server.log(), "the intruder must never join"
