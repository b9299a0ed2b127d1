"""Active speakers: who is talking in a room, read from the audio-level RTP header extension (RFC 6464).

A publisher's client writes the level of each packet's audio (0..127 -dBov, 127 = silence) into a header
extension, so the server learns who speaks without decoding anything. As LiveKit does (`pkg/sfu/audio`,
`pkg/rtc/room.go`): each microphone track's levels are gathered over windows of `update_interval`; a
window counts as speech when at least `min_percentile` % of it was at `active_level` or louder, and its
level is then the loudest one, lowered by how little of the window was speech, smoothed over
`smooth_intervals` windows. Every `update_interval` a room sends `speakers_changed` with what changed
since the last one (speakers that became active or whose level moved, loudest first; a last inactive entry
for each who stopped). Each participant hears of itself and of those it subscribes to, and is told what
changed for it: a new subscriber learns who already speaks, as LiveKit tells it on subscription.

Pure logic apart from `ActiveSpeakers`, the rooms' periodic tasks; no aiortc here, so that the settings
load without it.
"""

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit.protocol import models, rtc

log = logging.getLogger("switchboard.rtc")

SILENCE = 127
"""The audio-level extension's value for silence (-127 dBov)."""
_RTP_CLOCK = 48000  # Opus, the only audio relayed
# Levels are sent in eighths, as LiveKit quantizes them: a small move is not worth an update.
_LEVEL_STEPS = 8


@dataclass(frozen=True)
class AudioSettings:
    """livekit.yaml's `audio` section."""

    active_level: int = 35
    """Level (-dBov, 0 = loudest, 127 = silence) at or above which audio counts as speech."""
    min_percentile: int = 40
    """Share of a window (%) that must be speech for a track to be speaking."""
    update_interval: int = 400
    """Milliseconds: the observation window, and how often rooms send speaker changes."""
    smooth_intervals: int = 2
    """Windows the level is smoothed over (an exponential moving average); 0 = not smoothed."""


def linear(level: float) -> float:
    """A level in -dBov as a linear amplitude, 1 = full scale: what `SpeakerInfo.level` carries."""
    return float(10 ** (-level / 20))


class TrackLevel:
    """The speech level of one published audio track, from its packets' audio-level extensions."""

    def __init__(self, settings: AudioSettings) -> None:
        self._active_level = settings.active_level
        self._window_ms = settings.update_interval
        self._min_speech_ms = settings.min_percentile * settings.update_interval / 100
        # An exponential moving average with the centre of mass of a plain average over that many windows.
        self._smoothing = 2 / (settings.smooth_intervals + 1) if settings.smooth_intervals > 0 else 1.0
        self._threshold = linear(settings.active_level)
        self._level = 0.0
        self._loudest = SILENCE
        self._speech_ms = 0.0
        self._observed_ms = 0.0
        self._last_seen: float | None = None
        self._last_timestamp: int | None = None

    def observe_packet(self, level: int, rtp_timestamp: int, now: float) -> None:
        """A packet's level (-dBov); it stands for the audio since the previous packet (RTP timestamps)."""
        previous = self._last_timestamp
        if previous is None:
            self._last_timestamp = rtp_timestamp
            return
        elapsed = (rtp_timestamp - previous) % (1 << 32)
        if elapsed >= 1 << 31:
            return  # an older packet, reordered: its time was counted already
        self._last_timestamp = rtp_timestamp
        if elapsed:
            # As LiveKit, a packet after a gap (DTX sends one every 400 ms of silence) stands for the whole
            # gap; but for one window at most, or the first word after a long mute would count as seconds
            # of speech and be weighed far above its level.
            self.observe(level, min(elapsed * 1000 / _RTP_CLOCK, self._window_ms), now)

    def observe(self, level: int, duration_ms: float, now: float) -> None:
        """`duration_ms` of audio at `level` (-dBov), seen at `now` (seconds, monotonic)."""
        self._last_seen = now
        self._observed_ms += duration_ms
        if level <= self._active_level:
            self._speech_ms += duration_ms
            self._loudest = min(self._loudest, level)
        if self._observed_ms < self._window_ms:
            return
        level_now = 0.0
        if self._speech_ms and self._speech_ms >= self._min_speech_ms:
            # The loudest level, lowered by 20·log10 of the share of the window that was speech: a short
            # shout ranks below steady talk at the same level. Never above full scale.
            adjusted = self._loudest - 20 * math.log10(self._speech_ms / self._window_ms)
            level_now = self._level + (min(linear(adjusted), 1.0) - self._level) * self._smoothing
        self._start_window(level_now)

    def current(self, now: float) -> tuple[float, bool]:
        """The smoothed level (linear) and whether the track is speaking; silent once no packet came
        for two windows (the publisher stopped sending, e.g. muted)."""
        if self._last_seen is None or (now - self._last_seen) * 1000 >= 2 * self._window_ms:
            self._start_window(0.0)
        return self._level, self._level >= self._threshold

    def _start_window(self, level: float) -> None:
        self._level = level
        self._loudest = SILENCE
        self._speech_ms = 0.0
        self._observed_ms = 0.0


class Levelled(Protocol):
    """A published track whose level is known (`None`: not a microphone, it never makes a speaker)."""

    @property
    def level(self) -> TrackLevel | None: ...


class Speaker(Protocol):
    """Whose tracks make a speaker: a participant, or its forward into another room."""

    @property
    def sid(self) -> str: ...

    @property
    def hidden(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    @property
    def relays(self) -> Mapping[str, Levelled]: ...


class SignalSink(Protocol):
    def send(self, message: rtc.SignalResponse) -> Any: ...


class Listener(Speaker, Protocol):
    """A connected participant: told of the speakers it subscribes to, and of itself."""

    @property
    def subscriptions(self) -> Mapping[str, Any]: ...

    @property
    def signal(self) -> SignalSink: ...


def speaker_level(speaker: Speaker, now: float) -> float | None:
    """The level of a participant's loudest speaking track; None while none speaks."""
    levels = []
    for relay in speaker.relays.values():
        if relay.level is not None:
            level, speaking = relay.level.current(now)
            if speaking:
                levels.append(level)
    return max(levels) if levels else None


class RoomSpeakers:
    """What a room last told each participant about its speakers, and so what changed since."""

    def __init__(self) -> None:
        self.told: dict[str, dict[str, float]] = {}
        """By listener sid: the speakers it was last told are active, with their levels."""

    def updates(
        self, listeners: Iterable[Listener], speakers: Sequence[Speaker], now: float
    ) -> list[tuple[Listener, list[models.SpeakerInfo]]]:
        """For each listener with news: the speakers it hears of that started or whose level moved,
        loudest first, then those that stopped (or that it no longer hears of)."""
        active: dict[str, float] = {}
        for speaker in speakers:
            if speaker.closed or speaker.hidden:
                continue
            level = speaker_level(speaker, now)
            if level is not None:
                active[speaker.sid] = math.ceil(level * _LEVEL_STEPS) / _LEVEL_STEPS
        loudest_first = sorted(active.items(), key=lambda item: item[1], reverse=True)
        told: dict[str, dict[str, float]] = {}
        updates = []
        for listener in listeners:
            # As LiveKit: a participant hears of itself and of those it subscribes to. Telling each what
            # changed for it also tells a new subscriber who already speaks, and clears one unsubscribed.
            subscribed = {
                speaker.sid
                for speaker in speakers
                if any(track_sid in listener.subscriptions for track_sid in speaker.relays)
            }
            heard = {sid: level for sid, level in loudest_first if sid == listener.sid or sid in subscribed}
            before = self.told.get(listener.sid, {})
            changes = [
                models.SpeakerInfo(sid=sid, level=level, active=True)
                for sid, level in heard.items()
                if before.get(sid) != level
            ]
            changes += [
                models.SpeakerInfo(sid=sid, level=0, active=False) for sid in before if sid not in heard
            ]
            told[listener.sid] = heard
            if changes:
                updates.append((listener, changes))
        self.told = told
        return updates


class RoomView(Protocol):
    """Who is in a room: connected participants, and participants forwarded into it, by identity."""

    @property
    def sessions(self) -> Mapping[str, Listener]: ...

    @property
    def forwards(self) -> Mapping[str, Speaker]: ...


class ActiveSpeakers:
    """The rooms' speaker updates: a task per room with participants, which ends when the room empties."""

    def __init__(self, settings: AudioSettings, rooms: Mapping[str, RoomView]) -> None:
        self.settings = settings
        self._rooms = rooms
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def watched(self) -> frozenset[str]:
        """The rooms whose speakers are being told now."""
        return frozenset(self._tasks)

    def track_level(self, source: str) -> TrackLevel | None:
        """What measures a newly published track: as LiveKit, only microphones make speakers."""
        return TrackLevel(self.settings) if source == "microphone" else None

    def watch(self, room: str) -> None:
        """Someone is in `room` now: keep its speakers told (once per room, however often asked)."""
        if room not in self._tasks:
            self._tasks[room] = asyncio.get_running_loop().create_task(self._run(room))

    async def _run(self, room: str) -> None:
        told = RoomSpeakers()
        try:
            while True:
                await asyncio.sleep(self.settings.update_interval / 1000)
                present = self._rooms.get(room)
                listeners = [s for s in present.sessions.values() if not s.closed] if present else []
                if present is None or not listeners:
                    return
                speakers = [*listeners, *present.forwards.values()]
                for listener, changes in told.updates(listeners, speakers, time.monotonic()):
                    update = rtc.SpeakersChanged(speakers=changes)
                    listener.signal.send(rtc.SignalResponse(speakers_changed=update))
        except Exception:  # a bug here must not go unnoticed, nor take the room's media down
            log.exception("speaker updates failed room=%s", room)
        finally:
            del self._tasks[room]
