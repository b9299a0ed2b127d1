"""Active speakers with the official SDKs: a participant who speaks (espeak-ng speech through the Python
`livekit` SDK, or a tone from Chromium's WebRTC) is named in the others' "active speakers changed"
events, and leaves the list once it falls silent. The server reads the audio-level RTP header extension the
clients' WebRTC stacks (libwebrtc, Chromium) write; nothing is decoded."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from livekit import rtc

from tests.browser import JOIN_TIMEOUT, BrowserScenario, served_page
from tests.conftest import Server
from tests.polling import eventually
from tests.speech import SENTENCES, frames, silence, speak

# A bound for what must happen, not an expected duration: with LiveKit's settings (the server's defaults)
# a speaker is told within a few 400 ms windows.
TOLD_DEADLINE = 10.0


@dataclass
class Told:
    """One "active speakers changed" event as a participant saw it."""

    at: float
    speakers: list[str]


@dataclass
class Participant:
    """A Python rtc participant that records the active speakers it is told about, and can speak."""

    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    told: list[Told] = field(default_factory=list)
    source: rtc.AudioSource | None = None

    def __post_init__(self) -> None:
        @self.room.on("active_speakers_changed")
        def on_speakers(speakers: list[rtc.Participant]) -> None:
            self.told.append(Told(time.monotonic(), [p.identity for p in speakers]))

    async def publish_microphone(self) -> None:
        self.source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)

    async def play(self, pcm: bytes) -> None:
        """In real time, as a microphone would."""
        assert self.source is not None, "publish first"
        for frame in frames(pcm):
            await self.source.capture_frame(frame)
        await self.source.wait_for_playout()

    def receives(self, identity: str) -> bool:
        """Whether this participant is subscribed to a track of `identity`'s."""
        return any(
            publication.subscribed
            for p in self.room.remote_participants.values()
            if p.identity == identity
            for publication in p.track_publications.values()
        )

    def named(self, identity: str, since: float = 0.0) -> list[Told]:
        return [t for t in self.told if t.at >= since and identity in t.speakers]


@pytest.fixture
async def join(server: Server) -> AsyncIterator[Callable[..., Any]]:
    made: list[Participant] = []
    room = f"speakers-{uuid.uuid4().hex[:8]}"

    async def join(identity: str, options: rtc.RoomOptions | None = None) -> Participant:
        participant = Participant(identity)
        made.append(participant)
        await participant.room.connect(
            server.ws_url, server.join_token(room, identity), options or rtc.RoomOptions()
        )
        return participant

    join.room = room  # type: ignore[attr-defined]
    yield join
    for participant in made:
        await participant.room.disconnect()


async def test_a_speaker_is_named_while_it_speaks_and_dropped_when_silent(join: Any) -> None:
    alice = await join("alice")
    bob = await join("bob")
    deaf = await join("deaf", rtc.RoomOptions(auto_subscribe=False))
    await alice.publish_microphone()

    # Silence first: a published microphone that says nothing is no speaker.
    await eventually(lambda: bob.receives("alice"), "bob to receive alice", TOLD_DEADLINE)
    await alice.play(silence(1.0))
    assert not bob.named("alice"), bob.told

    speech = asyncio.ensure_future(alice.play(speak(SENTENCES[0])))
    began = time.monotonic()
    named = await eventually(lambda: bob.named("alice", began), "bob told that alice speaks", TOLD_DEADLINE)
    assert named[0].speakers == ["alice"]
    await eventually(lambda: alice.named("alice", began), "alice told that she speaks", TOLD_DEADLINE)
    await speech

    # Then silence frames: alice still publishes and sends, and no longer speaks.
    silent = asyncio.ensure_future(alice.play(silence(3.0)))
    await eventually(
        lambda: bob.told[-1].speakers == [], f"bob told that nobody speaks: {bob.told}", TOLD_DEADLINE
    )
    settled = time.monotonic()
    await silent
    assert not bob.named("alice", settled), f"alice named again while silent: {bob.told}"
    assert alice.told[-1].speakers == [], alice.told
    # As LiveKit: a participant hears of the speakers it subscribes to (and of itself) only.
    assert not deaf.told, deaf.told


async def test_the_browser_sdk_sees_speakers_and_chromium_is_seen_speaking(server: Server, join: Any) -> None:
    alice = await join("alice")
    await alice.publish_microphone()
    subscribed = asyncio.Event()
    alice.room.on("local_track_subscribed", lambda *_: subscribed.set())
    async with served_page() as page_url:
        browser = BrowserScenario(server, page_url, "speakers", server.join_token(join.room, "browser"))
        await browser.start()
        try:
            # Each hears of the other once subscribed to its microphone (LiveKit scopes updates so).
            await browser.wait_for(subscribed, "the browser to subscribe to alice", JOIN_TIMEOUT)
            await eventually(lambda: alice.receives("browser"), "alice to receive the browser", JOIN_TIMEOUT)
            await alice.play(speak(SENTENCES[1]) + silence(2.0))

            # Chromium writes the audio-level extension too: its tone makes it a speaker, silence ends it.
            assert not alice.named("browser"), f"the silent browser was named: {alice.told}"
            browser.tell("tone")
            named = await eventually(
                lambda: alice.named("browser"), "alice told the browser speaks", TOLD_DEADLINE
            )
            browser.tell("quiet")
            await eventually(
                lambda: alice.told[-1].at > named[0].at and alice.told[-1].speakers == [],
                f"alice told that the browser stopped: {alice.told}",
                TOLD_DEADLINE,
            )
            browser.tell("leave")
            told = (await browser.result())["told"]
        finally:
            await browser.kill()

    named_alice = [i for i, event in enumerate(told) if "alice" in event["speakers"]]
    assert named_alice, told
    for event in told:  # the SDK's participants say so too, with the level the server sent
        assert all(event["speaking"]) and all(0 < level <= 1 for level in event["levels"]), event
    # After the last time alice was named, the browser was told she stopped.
    assert any("alice" not in event["speakers"] for event in told[named_alice[-1] + 1 :]), told
    # Its own microphone: livekit-client names its local participant too.
    assert any("browser" in event["speakers"] for event in told), told
