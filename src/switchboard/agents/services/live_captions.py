"""The `live_captions` service: every non-agent participant's microphone, transcribed, as LiveKit captions.

Captions go out the way LiveKit frontends read them (livekit-client's `lk.transcription` handler, the
React `useTranscriptions` hook): one text stream per result on topic `lk.transcription`, sent on behalf of
the speaking participant, with `lk.transcribed_track_id`, `lk.segment_id` (one per utterance: interim
results and the final one share it) and `lk.transcription_final`.
"""

import asyncio
import contextlib
import logging
from typing import Any

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from switchboard.agents.services.pocketsphinx_stt import SAMPLE_RATE

logger = logging.getLogger("switchboard.agents.live_captions")

# Audio reaches the STT in 50 ms frames rather than WebRTC's 10 ms: a fifth of the per-frame hops
# (FFI, resampler, decoder thread) for 40 ms more delay at most.
FRAME_MS = 50
PUBLISH_GRACE = 2.0


class LiveCaptions:
    """Transcribes each subscribed audio track of a room's non-agent participants until it goes away."""

    def __init__(self, room: rtc.Room, engine: stt.STT[Any]) -> None:
        self.room = room
        self.engine = engine
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unsubscribed", self._on_track_unsubscribed)
        room.on("participant_disconnected", self._on_participant_disconnected)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await utils.aio.cancel_and_wait(*tasks)
        if self._publishing:  # captions under way are let finish, briefly
            await asyncio.wait(self._publishing, timeout=PUBLISH_GRACE)
        await self.engine.aclose()

    def _on_track_subscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            track.kind != rtc.TrackKind.KIND_AUDIO
            or participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ):
            return
        if publication.sid in self._tasks:
            return
        task = asyncio.create_task(self._transcribe(track, publication.sid, participant.identity))
        self._tasks[publication.sid] = task
        task.add_done_callback(lambda _: self._forget(publication.sid, task))
        logger.info("transcribing %s's track %s", participant.identity, publication.sid)

    def _on_track_unsubscribed(
        self, _: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._stop(publication.sid)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid in participant.track_publications:
            self._stop(sid)

    def _stop(self, track_sid: str) -> None:
        task = self._tasks.pop(track_sid, None)  # at once: the track may be subscribed again before it ends
        if task is not None:
            task.cancel()

    def _forget(self, track_sid: str, task: "asyncio.Task[None]") -> None:
        """However a transcription ends (stopped, its audio over, failed), its track is let go."""
        if self._tasks.get(track_sid) is task:
            del self._tasks[track_sid]
        if not task.cancelled() and task.exception() is not None:
            logger.error("transcription of track %s failed", track_sid, exc_info=task.exception())
        logger.info("stopped transcribing track %s", track_sid)

    async def _transcribe(self, track: rtc.Track, track_sid: str, identity: str) -> None:
        audio = rtc.AudioStream.from_track(
            track=track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
        recognition = self.engine.stream()

        async def forward() -> None:
            try:
                async for event in audio:
                    recognition.push_frame(event.frame)
            finally:  # the recognition ends with its audio, however that ends (unless it ended first)
                with contextlib.suppress(RuntimeError):
                    recognition.end_input()

        forwarding = asyncio.create_task(forward())
        segment_id = utils.shortuuid("SG_")
        unfinished = ""  # the last interim text of a segment that has no final caption yet
        try:
            async for event in recognition:
                if event.type == stt.SpeechEventType.START_OF_SPEECH:
                    segment_id = utils.shortuuid("SG_")
                elif event.type in (
                    stt.SpeechEventType.INTERIM_TRANSCRIPT,
                    stt.SpeechEventType.FINAL_TRANSCRIPT,
                ):
                    final = event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
                    text = event.alternatives[0].text if event.alternatives else ""
                    if text:
                        unfinished = "" if final else text
                        # Shielded: a caption begun is finished even if the track goes away meanwhile,
                        # or readers would wait for the rest of a stream that never comes.
                        await asyncio.shield(self._send(identity, track_sid, segment_id, text, final))
                    if final:  # providers without START_OF_SPEECH still get one segment per utterance
                        segment_id = utils.shortuuid("SG_")
        finally:
            if unfinished:  # cut off mid-utterance: what was heard becomes final, or it would stay interim
                self._send(identity, track_sid, segment_id, unfinished, True)
            await utils.aio.cancel_and_wait(forwarding)
            await recognition.aclose()
            await audio.aclose()

    def _send(
        self, identity: str, track_sid: str, segment_id: str, text: str, final: bool
    ) -> "asyncio.Task[None]":
        """Publish a caption as a task of its own, which aclose() lets finish."""
        task = asyncio.create_task(self._publish(identity, track_sid, segment_id, text, final))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return task

    async def _publish(self, identity: str, track_sid: str, segment_id: str, text: str, final: bool) -> None:
        attributes = {
            ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if final else "false",
            ATTRIBUTE_TRANSCRIPTION_TRACK_ID: track_sid,
            ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: segment_id,
        }
        try:
            writer = await self.room.local_participant.stream_text(
                topic=TOPIC_TRANSCRIPTION, sender_identity=identity, attributes=attributes
            )
            await writer.write(text)
            await writer.aclose()
        except Exception as exc:  # the room is going away: drop this caption, the next one may pass
            logger.warning("could not publish a caption for %s's track %s: %s", identity, track_sid, exc)
