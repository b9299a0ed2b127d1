"""End to end: a participant joins a room with the Python rtc SDK, a real livekit-agents worker is dispatched,
its job joins the room (`ctx.connect()`), hears the participant's audio, and answers with a transcription
text stream that the participant receives."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from tests.agent_workers import AgentWorker, eventually
from tests.conftest import Server, start_server, stop_server

TONE_AMPLITUDE = 8000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(tmp_path_factory.mktemp("server"), {"logging": {"level": "debug"}})
    yield instance
    stop_server(instance)


class Speaker:
    """A participant that publishes a 440 Hz tone and collects the transcriptions sent to it."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.transcriptions: list[dict[str, Any]] = []
        self._tone: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Future[None]] = set()

    async def join(self, server: Server, token: str) -> None:
        def on_transcription(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                text = await reader.read_all()
                self.transcriptions.append(
                    {"text": text, "from": sender, "attributes": reader.info.attributes}
                )

            reading = asyncio.ensure_future(read())
            self._readers.add(reading)
            reading.add_done_callback(self._readers.discard)

        self.room.register_text_stream_handler("lk.transcription", on_transcription)
        await self.room.connect(server.ws_url, token)
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.publication = await self.room.local_participant.publish_track(track, options)
        self._tone = asyncio.ensure_future(self._play(source))

    async def _play(self, source: rtc.AudioSource) -> None:
        offset = 0
        while True:
            t = (np.arange(480) + offset) / 48000
            samples = (TONE_AMPLITUDE * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
            offset += 480
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), 48000, 1, 480))

    async def leave(self) -> None:
        if self._tone is not None:
            self._tone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tone
        await self.room.disconnect()


@pytest.fixture
async def speaker() -> AsyncIterator[Speaker]:
    participant = Speaker()
    yield participant
    await participant.leave()


def heard(worker: AgentWorker, identity: str) -> dict[str, Any] | None:
    for path in worker.records.glob("*.heard"):
        result: dict[str, Any] = json.loads(path.read_text())
        if result["participant"] == identity:
            return result
    return None


async def assert_agent_heard_and_answered(
    worker: AgentWorker, speaker: Speaker, identity: str, room: str
) -> None:
    result = await eventually(lambda: heard(worker, identity), "the agent to hear the participant")
    assert result["participant"] == identity and result["track_sid"] == speaker.publication.sid
    assert result["rms"] > TONE_AMPLITUDE / 4, f"the relayed tone is too quiet: {result}"
    [message] = await eventually(lambda: speaker.transcriptions, "the transcription to reach the participant")
    assert message["text"].startswith(f"heard {identity} at rms ")
    assert message["attributes"]["lk.transcribed_track_id"] == speaker.publication.sid
    assert message["attributes"]["lk.transcription_final"] == "true"
    # An automatic worker also serves the pending jobs of rooms that earlier tests left open.
    [job_id] = [job_id for job_id, record in worker.jobs().items() if record["room"] == room]
    assert message["from"] == f"agent-{job_id}", "sent by the agent participant the job token named"


async def test_manual_agent_dispatched_by_the_participants_token(
    server: Server, workers: Any, speaker: Speaker
) -> None:
    worker = workers("listener", "listen")
    room = f"token-{uuid.uuid4().hex[:8]}"
    token = server.join_token(room, "alice", agents=[{"agentName": "listener", "metadata": "from-token"}])
    await speaker.join(server, token)
    await assert_agent_heard_and_answered(worker, speaker, "alice", room)
    [record] = [r for r in worker.jobs().values() if r["room"] == room]
    assert record["metadata"] == "from-token"
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
        dispatches = await lkapi.agent_dispatch.list_dispatch(room)
    assert [d.agent_name for d in dispatches] == ["listener"], "the token's agent replaces the automatic one"


async def test_token_agents_join_a_room_that_already_exists_once(
    server: Server, workers: Any, speaker: Speaker
) -> None:
    worker = workers("late-listener", "listen")
    room = f"existing-{uuid.uuid4().hex[:8]}"
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name=room))
        token = server.join_token(room, "bob", agents=[{"agentName": "late-listener"}])
        await speaker.join(server, token)
        await assert_agent_heard_and_answered(worker, speaker, "bob", room)
        # The same token connecting again adds no second dispatch.
        again = rtc.Room()
        await again.connect(
            server.ws_url, server.join_token(room, "bob-2", agents=[{"agentName": "late-listener"}])
        )
        await again.disconnect()
        names = sorted(d.agent_name for d in await lkapi.agent_dispatch.list_dispatch(room))
    assert names == ["", "late-listener"]


async def test_automatic_agent_joins_with_a_plain_token(
    server: Server, workers: Any, speaker: Speaker
) -> None:
    worker = workers("", "listen")
    room = f"plain-{uuid.uuid4().hex[:8]}"
    await speaker.join(server, server.join_token(room, "carol"))
    await assert_agent_heard_and_answered(worker, speaker, "carol", room)
