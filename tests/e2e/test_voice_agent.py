"""The built-in voice agent, end to end: `agents/agent-voice-echo.yaml` as it ships, run by `switchboard
serve`, dispatched with CreateDispatch; a participant (the Python rtc SDK) hears its greeting, speaks a
sentence synthesised by espeak-ng, and hears the agent say it back. What the participant hears is
transcribed with pocketsphinx, so the test passes only if real speech made the whole trip: participant →
server → agent STT → agent TTS → server → participant."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from switchboard.agents.services.pocketsphinx_stt import SAMPLE_RATE, PocketSphinxSTT
from tests.agent_workers import eventually, registered
from tests.conftest import Server
from tests.e2e.captions import new_room, serve_agents
from tests.speech import Speaker

AGENT = "voice-echo"
SAMPLE = Path(__file__).parents[2] / "agents" / f"agent-{AGENT}.yaml"
# Generous: the job process starts, loads its models, joins, and the greeting waits for a subscriber.
VOICE_DEADLINE = 60.0
QUIET = 1.5  # seconds without loud audio that end what the agent says
ATTEMPTS = 4
LOUD = 500.0  # RMS of a 16-bit frame that counts as speech (the agent's silence is digital zero)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_agents(tmp_path_factory, {AGENT: SAMPLE.read_text()})


class Listener:
    """What a participant hears of the agents in the room, as 16 kHz mono PCM."""

    def __init__(self, room: rtc.Room) -> None:
        self.pcm = bytearray()
        self.loud_at: list[tuple[int, float]] = []
        """(offset in pcm, time.monotonic()) of each loud frame."""
        self._tasks: set[asyncio.Task[None]] = set()

        @room.on("track_subscribed")
        def on_track(track: rtc.Track, _: Any, participant: rtc.RemoteParticipant) -> None:
            if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
                task = asyncio.create_task(self._listen(track))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            if samples.size and np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > LOUD:
                self.loud_at.append((len(self.pcm), time.monotonic()))
            self.pcm += samples.tobytes()

    async def utterance(self, start: int, what: str) -> tuple[str, int]:
        """Wait for the agent to say something after byte `start` and fall quiet; what pocketsphinx
        understands of it, and where it ended."""

        def said() -> bool:
            loud = [at for offset, at in self.loud_at if offset >= start]
            return bool(loud) and time.monotonic() - loud[-1] > QUIET

        await eventually(said, what, VOICE_DEADLINE)
        end = len(self.pcm)
        audio = bytes(self.pcm[start:end])
        recognizer = PocketSphinxSTT()
        event = await recognizer.recognize(rtc.AudioFrame(audio, SAMPLE_RATE, 1, len(audio) // 2))
        await recognizer.aclose()
        return event.alternatives[0].text, end

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


async def join_and_listen(server: Server, room: str, identity: str) -> tuple[Speaker, Listener]:
    speaker = Speaker(identity)
    listener = Listener(speaker.room)  # before joining: the agent may be in the room first
    await speaker.join(server.ws_url, server.join_token(room, identity))
    return speaker, listener


async def greeted(listener: Listener, speaker: Speaker) -> int:
    """Wait for the agent's greeting; where it ends in what the listener heard.

    "Hello! I am an echo. Say something, and I will repeat it." is heard if pocketsphinx finds one of its
    words in the audio; on a loaded machine it sometimes garbles the whole of it, and then the audio heard
    must be what the agent's own transcript (its lk.transcription stream) says it just said. The reply
    below is always checked on the audio alone.
    """
    greeting, heard = await listener.utterance(0, "the agent's greeting")
    if not any(word in greeting for word in ("repeat", "something", "echo")):
        said = await eventually(
            lambda: [c.text for c in speaker.captions if "repeat" in c.text.lower()],
            "the agent's transcript of its greeting",
        )
        assert said and heard > SAMPLE_RATE * 2 * 2, (greeting, said)  # over 2 s of its voice heard
    return heard


async def test_the_voice_agent_greets_and_says_back_what_it_heard(
    server: Server, lkapi: api.LiveKitAPI
) -> None:
    await registered(server, AGENT)
    room = new_room()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=room, agent_name=AGENT))
    alice, listener = await join_and_listen(server, room, "alice")
    try:
        heard = await greeted(listener, alice)
        # "You said: please call me back tomorrow morning", through two recognisers and two syntheses:
        # each step loses words (the agent's pocketsphinx most on its first utterance, before its live
        # cepstral normalisation has adapted), so the sentence is said again, up to ATTEMPTS times, until
        # the reply carries the distinctive words. Every utterance must be answered with "you said".
        replies = []
        for _ in range(ATTEMPTS):
            await alice.say("please call me back tomorrow morning")
            reply, heard = await listener.utterance(heard, "the agent's reply")
            replies.append(reply)
            assert "said" in reply, (replies, [c.text for c in alice.captions])
            if "tomorrow" in reply or "morning" in reply:
                break
        else:
            pytest.fail(f"no reply repeated the sentence: {replies}; captions: {alice.captions}")
    finally:
        listener.stop()
        await alice.leave()

    # The agent stays in the room, and greets whoever comes next.
    bob, listener = await join_and_listen(server, room, "bob")
    try:
        await greeted(listener, bob)
    finally:
        listener.stop()
        await bob.leave()
