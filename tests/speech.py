"""Synthesised speech for the captions tests and bench/captions.py: Debian's espeak-ng (installed by
.ci/run), as 16-bit mono PCM at the rate a publisher sends, and a way to publish it in real time."""

import asyncio
import io
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass

from livekit import rtc

PUBLISH_RATE = 48000
FRAME_MS = 10
SENTENCES = (
    "hello world this is a test",
    "what is the weather like today",
    "please call me back tomorrow morning",
    "the meeting starts at ten o'clock",
    "i would like a cup of coffee",
)


def speak(text: str, sample_rate: int = PUBLISH_RATE) -> bytes:
    """`text` spoken by espeak-ng (US English), resampled to `sample_rate`."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: .ci/run installs it (apt-get install espeak-ng)"
    wav = subprocess.run(
        [espeak, "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True, check=True
    )
    with wave.open(io.BytesIO(wav.stdout)) as reader:
        rate, pcm = reader.getframerate(), reader.readframes(reader.getnframes())
    resampler = rtc.AudioResampler(rate, sample_rate, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH)
    return b"".join(bytes(frame.data) for frame in (*resampler.push(bytearray(pcm)), *resampler.flush()))


def silence(seconds: float, sample_rate: int = PUBLISH_RATE) -> bytes:
    return bytes(2 * int(seconds * sample_rate))


def frames(pcm: bytes, sample_rate: int = PUBLISH_RATE) -> Iterator[rtc.AudioFrame]:
    """10 ms frames, the last one padded with silence."""
    size = sample_rate * FRAME_MS // 1000
    for start in range(0, len(pcm), 2 * size):
        chunk = pcm[start : start + 2 * size].ljust(2 * size, b"\0")
        yield rtc.AudioFrame(chunk, sample_rate, 1, size)


@dataclass
class Caption:
    sender: str
    attributes: dict[str, str]
    text: str
    received_at: float

    @property
    def final(self) -> bool:
        return self.attributes.get("lk.transcription_final") == "true"


class Speaker:
    """A Python rtc participant that speaks synthesised sentences and collects the captions it receives."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.captions: list[Caption] = []
        self.track_sid = ""
        self._source: rtc.AudioSource | None = None
        self._readers: set[asyncio.Future[None]] = set()

        def on_caption(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                try:
                    text = await reader.read_all()
                except rtc.data_stream.StreamError:  # cut off by a leaving participant: no caption
                    return
                self.captions.append(Caption(sender, dict(reader.info.attributes), text, time.monotonic()))

            task = asyncio.ensure_future(read())
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

        self.room.register_text_stream_handler("lk.transcription", on_caption)

    async def join(self, url: str, token: str) -> None:
        await self.room.connect(url, token)
        self._source = rtc.AudioSource(PUBLISH_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.track_sid = (await self.room.local_participant.publish_track(track, options)).sid

    async def say(self, text: str, pause: float = 1.5) -> float:
        """Speak `text` in real time, then `pause` seconds of silence (which ends the utterance).
        Returns when the speech began (time.monotonic())."""
        assert self._source is not None, "join first"
        began = time.monotonic()
        for frame in frames(speak(text) + silence(pause)):
            await self._source.capture_frame(frame)
        await self._source.wait_for_playout()
        return began

    def finals(self) -> list[Caption]:
        return [c for c in self.captions if c.final]

    def agents(self) -> list[rtc.RemoteParticipant]:
        kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        return [p for p in self.room.remote_participants.values() if p.kind == kind]

    async def leave(self) -> None:
        for task in list(self._readers):
            task.cancel()
        await self.room.disconnect()
