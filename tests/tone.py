"""A Python rtc participant's microphone playing a known tone, for tests that listen for it."""

import asyncio
import itertools

import numpy as np
from livekit import rtc

TONE_HZ = 440
AMPLITUDE = 8000  # an RMS of ≈5657 in int16
SAMPLE_RATE = 48000
FRAME = 480  # 10 ms


async def publish_tone(room: rtc.Room) -> tuple[rtc.LocalTrackPublication, asyncio.Task[None]]:
    """Publish a microphone track playing the tone in real time; cancel the task to stop it."""
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await room.local_participant.publish_track(track, options)

    async def play() -> None:
        t = np.arange(FRAME) / SAMPLE_RATE
        for n in itertools.count():
            samples = (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * (t + n * FRAME / SAMPLE_RATE))).astype(
                np.int16
            )
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, FRAME))

    return publication, asyncio.ensure_future(play())
