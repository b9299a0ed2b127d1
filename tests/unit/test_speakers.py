"""Active speakers (rtc/speakers.py): track levels from audio-level extensions, what a room tells and to
whom, the rooms' periodic task, and the `audio` config section. Fakes stand for sessions and relays."""

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import rtc

from switchboard.config import ConfigError, load_config
from switchboard.rtc.speakers import (
    SILENCE,
    ActiveSpeakers,
    AudioSettings,
    RoomSpeakers,
    TrackLevel,
    linear,
)
from tests.polling import eventually

SETTINGS = AudioSettings()  # LiveKit's: -35 dBov, 40 %, 400 ms windows, smoothed over 2
WINDOW_S = SETTINGS.update_interval / 1000
FRAME_MS = 20
FRAME_TICKS = 960  # 20 ms of RTP timestamps at 48 kHz


def speak(track: TrackLevel, level: int, seconds: float, start: float = 0.0) -> float:
    """Feed `seconds` of 20 ms packets at `level` (-dBov); returns the time after the last one."""
    now = start
    for _ in range(round(seconds * 1000 / FRAME_MS)):
        now += FRAME_MS / 1000
        track.observe(level, FRAME_MS, now)
    return now


def test_steady_speech_speaks_at_its_loudest_level_smoothed() -> None:
    track = TrackLevel(SETTINGS)
    now = speak(track, 20, WINDOW_S)
    level, speaking = track.current(now)
    assert speaking
    # A whole window of speech: the loudest level itself, two thirds of the way from 0 (2 windows' EMA).
    assert level == pytest.approx(linear(20) * 2 / 3)
    now = speak(track, 20, WINDOW_S, now)
    assert track.current(now)[0] == pytest.approx(linear(20) * (2 / 3 + 2 / 9))


def test_silence_and_quiet_noise_never_speak() -> None:
    for level in (SILENCE, SETTINGS.active_level + 1):
        track = TrackLevel(SETTINGS)
        now = speak(track, level, 3 * WINDOW_S)
        assert track.current(now) == (0.0, False)


def test_a_window_needs_min_percentile_of_speech() -> None:
    track = TrackLevel(SETTINGS)
    # 140 ms of speech in a 400 ms window is 35 % < 40 %: not speaking.
    now = speak(track, 10, 0.14)
    now = speak(track, SILENCE, WINDOW_S - 0.14, now)
    assert track.current(now) == (0.0, False)
    # 200 ms is 50 %: speaking, at the loudest level lowered by 20·log10(0.5) ≈ 6 dB.
    now = speak(track, 10, 0.2, now)
    now = speak(track, SILENCE, WINDOW_S - 0.2, now)
    level, speaking = track.current(now)
    assert speaking
    assert level == pytest.approx(linear(10 - 20 * math.log10(0.5)) * 2 / 3)


def test_a_speaker_who_falls_silent_stops_at_the_next_window() -> None:
    track = TrackLevel(SETTINGS)
    now = speak(track, 20, 2 * WINDOW_S)
    assert track.current(now)[1]
    now = speak(track, SILENCE, WINDOW_S, now)
    assert track.current(now) == (0.0, False)


def test_a_track_that_stops_sending_is_silent_after_two_windows() -> None:
    track = TrackLevel(SETTINGS)
    now = speak(track, 20, WINDOW_S)
    assert track.current(now + 1.9 * WINDOW_S)[1]
    assert track.current(now + 2 * WINDOW_S) == (0.0, False)
    assert TrackLevel(SETTINGS).current(0.0) == (0.0, False)  # never heard from


def test_packets_stand_for_the_time_since_the_previous_one() -> None:
    track = TrackLevel(SETTINGS)
    timestamp = (1 << 32) - 5 * FRAME_TICKS  # wraps around during the window
    now = 0.0
    track.observe_packet(20, timestamp, now)  # the first packet only sets the clock
    for _ in range(SETTINGS.update_interval // FRAME_MS):
        timestamp = (timestamp + FRAME_TICKS) % (1 << 32)
        now += FRAME_MS / 1000
        track.observe_packet(20, timestamp, now)
        track.observe_packet(
            SILENCE, (timestamp - FRAME_TICKS) % (1 << 32), now
        )  # a reordered old packet: no time
    assert track.current(now) == (pytest.approx(linear(20) * 2 / 3), True)


def test_silence_sent_with_dtx_ends_speech_at_the_next_packet() -> None:
    track = TrackLevel(SETTINGS)
    track.observe_packet(20, 0, 0.0)
    for n in range(1, 21):  # 400 ms of speech
        track.observe_packet(20, n * FRAME_TICKS, n * FRAME_MS / 1000)
    assert track.current(0.4)[1]
    # DTX: one silence packet 400 ms later stands for the 400 ms of silence before it.
    track.observe_packet(SILENCE, 20 * FRAME_TICKS + 400 * 48, 0.8)
    assert track.current(0.8) == (0.0, False)


def test_a_level_is_never_above_full_scale() -> None:
    track = TrackLevel(AudioSettings(smooth_intervals=0))
    track.observe(0, 390, 0.39)
    track.observe(0, 30, 0.42)  # the window ends 20 ms late, all of it at 0 dBov: 105 % speech
    assert track.current(0.42) == (1.0, True)


def test_a_long_gap_counts_for_one_window_at_most() -> None:
    track = TrackLevel(SETTINGS)
    track.observe_packet(SILENCE, 0, 0.0)
    # Ten seconds without packets (a mute), then one loud packet: one window of speech, not a level
    # lifted by ten seconds' worth of it.
    track.observe_packet(10, 10 * 48000, 10.0)
    assert track.current(10.0) == (pytest.approx(linear(10) * 2 / 3), True)


@dataclass
class Relay:
    level: TrackLevel | None


@dataclass
class Signal:
    sent: list[rtc.SignalResponse] = field(default_factory=list)

    def send(self, message: rtc.SignalResponse) -> None:
        self.sent.append(message)


@dataclass
class Member:
    """A participant as the speaker logic sees it: what it publishes, what it receives, its signal."""

    sid: str
    relays: dict[str, Relay] = field(default_factory=dict)
    subscriptions: dict[str, Any] = field(default_factory=dict)
    hidden: bool = False
    closed: bool = False
    signal: Signal = field(default_factory=Signal)

    def speaking_at(self, level: int, now: float) -> "Member":
        track = TrackLevel(SETTINGS)
        speak(track, level, WINDOW_S, now - WINDOW_S)
        self.relays[f"TR_{self.sid}"] = Relay(track)
        return self

    def told(self) -> list[list[tuple[str, float, bool]]]:
        return [[(s.sid, s.level, s.active) for s in m.speakers_changed.speakers] for m in self.signal.sent]


def news_for(
    room: RoomSpeakers, listener: Member, members: list[Member], now: float
) -> list[tuple[str, float, bool]]:
    """What `listener` is told at `now` (one SpeakersChanged, or nothing)."""
    return [
        (c.sid, c.level, c.active) for _, changes in room.updates([listener], members, now) for c in changes
    ]


def test_a_room_tells_what_changed_loudest_first() -> None:
    room = RoomSpeakers()
    quiet = Member("PA_quiet").speaking_at(30, 1.0)
    loud = Member("PA_loud").speaking_at(5, 1.0)
    silent = Member("PA_silent", relays={"TR_s": Relay(TrackLevel(SETTINGS))})
    listener = Member("PA_listener", subscriptions={"TR_PA_quiet": 1, "TR_PA_loud": 1, "TR_s": 1})
    members = [quiet, silent, loud, listener]
    # Levels are linear, in eighths (rounded up), as LiveKit sends them.
    loud_level = math.ceil(linear(5) * 2 / 3 * 8) / 8
    assert news_for(room, listener, members, 1.0) == [
        ("PA_loud", loud_level, True),
        ("PA_quiet", 0.125, True),
    ]
    assert news_for(room, listener, members, 1.0) == []  # nothing moved: nothing to tell

    loud.relays["TR_PA_loud"] = Relay(TrackLevel(SETTINGS))  # fell silent
    assert news_for(room, listener, members, 1.0) == [("PA_loud", 0, False)]
    assert news_for(room, listener, members, 1.0) == []


def test_a_level_that_moves_is_told_again() -> None:
    room = RoomSpeakers()
    member = Member("PA_a").speaking_at(30, 1.0)
    assert news_for(room, member, [member], 1.0) == [("PA_a", 0.125, True)]
    member.speaking_at(3, 2.0)
    [(sid, level, active)] = news_for(room, member, [member], 2.0)
    assert (sid, active) == ("PA_a", True)
    assert level > 0.125


def test_hidden_closed_and_unmeasured_participants_are_no_speakers() -> None:
    hidden = Member("PA_h", hidden=True).speaking_at(5, 1.0)
    gone = Member("PA_g", closed=True).speaking_at(5, 1.0)
    screen = Member("PA_s", relays={"TR_screen": Relay(None)})  # not a microphone
    listener = Member("PA_l", subscriptions={"TR_PA_h": 1, "TR_PA_g": 1, "TR_screen": 1})
    assert news_for(RoomSpeakers(), listener, [hidden, gone, screen, listener], 1.0) == []


def test_each_participant_hears_of_itself_and_of_whom_it_subscribes_to() -> None:
    room = RoomSpeakers()
    alice = Member("PA_alice").speaking_at(5, 1.0)
    bob = Member("PA_bob").speaking_at(5, 1.0)
    listener = Member("PA_listener", subscriptions={"TR_PA_alice": 1})
    members = [alice, bob, listener]
    updates = {to.sid: [c.sid for c in changes] for to, changes in room.updates(members, members, 1.0)}
    assert updates == {"PA_alice": ["PA_alice"], "PA_bob": ["PA_bob"], "PA_listener": ["PA_alice"]}
    # A new subscriber learns who already speaks; one that unsubscribes is told the speaker is gone.
    listener.subscriptions = {"TR_PA_bob": 1}
    updates = {
        to.sid: [(c.sid, c.active) for c in changes] for to, changes in room.updates(members, members, 1.0)
    }
    assert updates == {"PA_listener": [("PA_bob", True), ("PA_alice", False)]}


@dataclass
class Room:
    sessions: dict[str, Member] = field(default_factory=dict)
    forwards: dict[str, Member] = field(default_factory=dict)


def test_only_microphones_are_measured() -> None:
    speakers = ActiveSpeakers(SETTINGS, {})
    assert isinstance(speakers.track_level("microphone"), TrackLevel)
    assert speakers.track_level("screen_share_audio") is None
    assert speakers.track_level("unknown") is None


async def test_each_room_sends_speakers_changed_until_it_empties() -> None:
    settings = AudioSettings(update_interval=50)
    track = TrackLevel(settings)
    alice = Member("PA_alice", relays={"TR_alice": Relay(track)})
    forwarded = Member("PA_fwd", relays={"TR_fwd": Relay(TrackLevel(settings))})
    bob = Member("PA_bob", subscriptions={"TR_alice": object(), "TR_fwd": object()})
    rooms = {"r": Room({"alice": alice, "bob": bob}, {"fwd": forwarded})}
    speakers = ActiveSpeakers(settings, rooms)
    speakers.watch("r")
    speakers.watch("r")  # one task per room, however often asked

    async def talk(track: TrackLevel) -> None:
        while True:  # what the relay does as packets arrive
            track.observe(10, FRAME_MS, time.monotonic())
            await asyncio.sleep(FRAME_MS / 1000)

    def entries(member: Member) -> list[tuple[str, bool]]:
        return [(sid, active) for update in member.told() for sid, _, active in update]

    talking = asyncio.ensure_future(talk(track))
    forwarded_talking = asyncio.ensure_future(talk(forwarded.relays["TR_fwd"].level))  # type: ignore[arg-type]
    await eventually(lambda: ("PA_alice", True) in entries(bob), "bob told that alice speaks")
    await eventually(lambda: ("PA_fwd", True) in entries(bob), "bob told that the forwarded one speaks")
    talking.cancel()
    forwarded_talking.cancel()
    await eventually(lambda: ("PA_alice", False) in entries(bob), "bob told that alice stopped")
    assert ("PA_alice", True) in entries(alice)
    assert {sid for sid, _ in entries(alice)} == {"PA_alice"}  # alice subscribes to no one
    assert speakers.watched == {"r"}

    rooms["r"].sessions.clear()
    await eventually(lambda: not speakers.watched, "the task of the emptied room ended")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "switchboard.yaml"
    path.write_text(text)
    return str(path)


def test_the_audio_section_as_livekit_yaml_writes_it(tmp_path: Path) -> None:
    assert load_config(dev=True).rtc.audio == AudioSettings(35, 40, 400, 2)
    text = "audio:\n  active_level: 30\n  min_percentile: 20\n  update_interval: 250\n  smooth_intervals: 0\n"
    config = load_config(write(tmp_path, text), dev=True)
    assert config.rtc.audio == AudioSettings(30, 20, 250, 0)
    assert not config.warnings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("audio: {active_level: 128}", "audio.active_level: must be at most 127"),
        ("audio: {min_percentile: 101}", "audio.min_percentile: must be at most 100"),
        ("audio: {update_interval: 10}", "audio.update_interval: must be at least 20"),
        ("audio: {smooth_intervals: -1}", "audio.smooth_intervals: must be at least 0"),
        ("audio: {active_level: loud}", "audio.active_level: expected an integer"),
    ],
)
def test_a_bad_audio_section_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), dev=True)
