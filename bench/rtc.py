"""Benchmark the media side as the official Python `livekit` rtc SDK uses it.

Five phases, each printed with its target:

  connect   `Room.connect()` time over sequential joins (the SDK's /rtc/v1 attempt, its 404 and the fall
            back to /rtc are included, as are ICE and DTLS of the primary connection);
  relay     server CPU per subscribed Opus stream: one publisher, then 0, 1, 4, 8 subscribers;
  latency   one-way audio latency: end to end (capture_frame → AudioStream) and, on the wire, the time a
            packet spends in the server (its arrival on loopback → its relayed copy's departure);
  capacity  audio publishers one server core carries before a listener subscribed to all of them sees
            gaps, or the server's core is full;
  video     one 1280x720 VP8 camera at LiveKit's 720p bitrate: server CPU per subscribed stream (0, 1, 4
            subscribers decoding it), the time a frame spends in the server on the wire, and the time from
            a late join to its first decoded frame.

The script starts its own server pinned to one CPU (media on loopback: `rtc.ice_addresses: [127.0.0.1]`)
and runs every client in this process (the SDK's libwebrtc threads included) pinned to another CPU, so
client CPU is reported too: a saturated client makes a figure a bound, and the report says so.

    .venv/bin/python bench/rtc.py [--phases connect,relay,latency,capacity,video] [--joins N] [--json]
"""

import abc
import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import statistics
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, Self, TypeVar

import numpy as np
from livekit import rtc

from common import (
    BUSY_CPU,
    NOISY_OTHER_CPU,
    CpuSample,
    Server,
    choose_cpus,
    machine,
    own_server,
    percent,
    percentile,
    verdict,
)
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

PHASES = ("connect", "relay", "latency", "capacity", "video")
RATE = 48000
FRAME = 480  # samples in a 10 ms frame: what capture_frame is fed and what AudioStream yields
FRAME_S = FRAME / RATE
PACKET_S = 0.020  # libwebrtc's Opus packet time
TONE_HZ = 1000  # a whole number of periods in a frame, so one frame repeats without a click
TONE_PEAK = 12000
TONE = (TONE_PEAK * np.sin(2 * np.pi * TONE_HZ * np.arange(FRAME) / RATE)).astype(np.int16).tobytes()
SILENCE = bytes(2 * FRAME)
ONSET_RMS = 0.1 * TONE_PEAK / np.sqrt(2)  # a tenth of the tone's RMS: a frame the burst only starts in counts
QUIET_FRAMES = 10  # an onset follows at least 100 ms below the threshold

TARGET_CONNECT_P50_MS = 150.0
TARGET_CPU_PER_STREAM = 0.05
TARGET_ADDED_MS = 40.0
SERVER_FULL = 0.95  # the capacity phase stops when the server uses this much of its core
CLIENT_NEARLY_FULL = 0.8  # said in the capacity verdict: a bigger room would be client-bound
GAP = 0.02  # ... or when the listener gets this fraction fewer packets or frames than were sent

# The video phase's camera: LiveKit's 720p preset (livekit-client `VideoPresets.h720`: 1.7 Mbit/s, 30 fps).
VIDEO_WIDTH, VIDEO_HEIGHT = 1280, 720
VIDEO_FPS = 30
VIDEO_MAX_BITRATE = 1_700_000
VIDEO_DISTINCT_FRAMES = 8
# libwebrtc starts at 300 kbit/s and raises its estimate from the server's REMB by about 8 % a second
# (aiortc has no transport-wide congestion control): the rows wait until it is near the maximum.
VIDEO_RAMP = 0.9
VIDEO_RAMP_DEADLINE = 60.0
TARGET_LATE_JOIN_MS = 1000.0  # issue 13: "a late joiner sees a picture within a second"
# libwebrtc's sender ignores keyframe requests within 300 ms of its last keyframe (EncoderRtcpFeedback,
# kMinKeyframeSendIntervalMs): late joiners one right after the other would measure that, not a late join.
LATE_JOIN_GAP = 1.0

WARMUP_JOINS = 2  # the first join loads libwebrtc into this process; not a server cost
SUBSCRIBE_DEADLINE = 15.0
SETTLE = 1.0  # seconds after the media flows before a window starts (negotiation, jitter buffers)

# Loopback capture (needs CAP_NET_RAW; without it the latency phase reports end to end only).
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35  # Linux; the socket module does not name it
PACKET_HOST = 0
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
UDP = 17


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Env:
    server: Server
    ws_url: str
    prefix: str  # so rooms of different runs against one server never meet


def token(env: Env, room: str, identity: str) -> str:
    server = env.server
    grant = VideoGrant(room_join=True, room=room)
    return mint_token(server.api_key, server.api_secret, video=grant, identity=identity)


async def join(env: Env, room: str, identity: str, *, subscribe: bool, ear: bool = False) -> "Client":
    client = Client(rtc.Room(), ear)  # the ear listens before connect(): tracks may arrive at once
    options = rtc.RoomOptions(auto_subscribe=subscribe)
    await client.room.connect(env.ws_url, token(env, f"{env.prefix}-{room}", identity), options)
    return client


def pin_all_threads(cpu: int) -> int:
    """Pin every thread of this process (libwebrtc's and the SDK's included) to `cpu`; threads started
    later inherit it from their creators. Returns how many threads there are."""
    tasks = os.listdir("/proc/self/task")
    for tid in tasks:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})
    return len(tasks)


class Client:
    """One participant; with `ear`, it consumes each audio track it subscribes to through rtc.AudioStream,
    counting frames per track and finding the onsets of tone bursts."""

    def __init__(self, room: rtc.Room, ear: bool) -> None:
        self.room = room
        # Per subscribed track: frames the AudioStream yielded (the SDK's playout makes them at 100/s
        # whether packets came or not), and those carrying the tone (RMS above the onset threshold).
        self.frames: dict[str, int] = {}
        self.loud: dict[str, int] = {}
        self.onsets: list[float] = []  # monotonic time each burst onset was received
        self._tasks: set[asyncio.Future[None]] = set()
        if ear:
            room.on("track_subscribed", self._on_track)

    def _on_track(self, track: rtc.Track, publication: rtc.RemoteTrackPublication, *_: Any) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            task = asyncio.ensure_future(self._consume(track, publication.sid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _consume(self, track: rtc.Track, sid: str) -> None:
        self.frames[sid] = self.loud[sid] = 0
        quiet = 0
        async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            received = time.monotonic()
            self.frames[sid] += 1
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float32)
            if float(np.sqrt(np.mean(samples * samples))) < ONSET_RMS:
                quiet += 1
                continue
            self.loud[sid] += 1
            if quiet >= QUIET_FRAMES:
                self.onsets.append(received)
            quiet = 0

    def total_frames(self) -> int:
        return sum(self.frames.values())

    def total_loud(self) -> int:
        return sum(self.loud.values())

    async def inbound_audio(self) -> list[Any]:
        stats = await self.room.get_rtc_stats()
        return [
            s.inbound_rtp
            for s in stats.subscriber_stats
            if s.WhichOneof("stats") == "inbound_rtp" and s.inbound_rtp.stream.kind == "audio"
        ]

    async def outbound_ssrcs(self) -> list[int]:
        stats = await self.room.get_rtc_stats()
        return [
            s.outbound_rtp.stream.ssrc
            for s in stats.publisher_stats
            if s.WhichOneof("stats") == "outbound_rtp" and s.outbound_rtp.stream.kind == "audio"
        ]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()


class PacedSource(abc.ABC):
    """A media source fed one frame every `interval` seconds in real time, paced on the monotonic clock
    (no queue in the SDK); `late` counts frames handed over more than a frame late: this process could not
    keep real time."""

    interval: float

    def __init__(self) -> None:
        self.frames = 0
        self.late = 0
        self._task: asyncio.Future[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            delay = start + self.frames * self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -self.interval:
                self.late += 1
            await self._capture(self.frames)
            self.frames += 1

    @abc.abstractmethod
    async def _capture(self, index: int) -> None:
        """Hand frame number `index` to the SDK."""

    @abc.abstractmethod
    async def _close(self) -> None: ...

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()


class Tone(PacedSource):
    """One AudioSource fed 10 ms frames. Every `period` frames it plays `burst` frames of a 1 kHz tone,
    else silence; period == burst is a continuous tone. One source may feed the tracks of several rooms:
    each encodes and sends it."""

    interval = FRAME_S

    def __init__(self, period: int = 1, burst: int = 1) -> None:
        super().__init__()
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=0)
        self.period, self.burst = period, burst
        self.onsets: list[float] = []  # monotonic time each burst's first frame was handed to the SDK
        self._tone = rtc.AudioFrame(TONE, RATE, 1, FRAME)
        self._silence = rtc.AudioFrame(SILENCE, RATE, 1, FRAME)

    async def publish(self, client: Client, name: str = "microphone") -> rtc.LocalTrackPublication:
        track = rtc.LocalAudioTrack.create_audio_track(name, self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False)
        return await client.room.local_participant.publish_track(track, options)

    async def _capture(self, index: int) -> None:
        phase = index % self.period
        if phase == 0 and self.burst < self.period:
            self.onsets.append(time.monotonic())
        await self.source.capture_frame(self._tone if phase < self.burst else self._silence)

    async def _close(self) -> None:
        await self.source.aclose()


async def wait_for(condition: Callable[[], bool], what: str, deadline: float = SUBSCRIBE_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Window:
    """Fractions of one core used over a span: this process (every client), the server, all else."""

    seconds: float
    client_cpu: float
    server_cpu: float | None
    other_cpu: float | None

    @classmethod
    def since(cls, server: Server, before: CpuSample, started: float) -> "Window":
        seconds = time.monotonic() - started
        return cls(seconds, *CpuSample.take(server.pid).usage_since(before, seconds))


async def idle_window(server: Server, seconds: float) -> Window:
    """Let the media flow for `seconds`, and say what CPU it took."""
    before, started = CpuSample.take(server.pid), time.monotonic()
    await asyncio.sleep(seconds)
    return Window.since(server, before, started)


def cpu_note(window: Window) -> str | None:
    if window.other_cpu is not None and window.other_cpu > NOISY_OTHER_CPU:
        return f"other processes used {percent(window.other_cpu)} of a core: noisy, rerun"
    if window.client_cpu >= BUSY_CPU:
        return f"clients used {percent(window.client_cpu)} of their core: client-bound"
    return None


# ---------------------------------------------------------------------------------------------- connect


async def phase_connect(env: Env, joins: int) -> dict[str, Any]:
    room = f"{env.prefix}-connect"
    for i in range(WARMUP_JOINS):
        warm = rtc.Room()
        await warm.connect(env.ws_url, token(env, room, f"warmup-{i}"))
        await warm.disconnect()
    tokens = [token(env, room, f"joiner-{i}") for i in range(joins)]  # minted outside the timed span
    times: list[float] = []
    before, began = CpuSample.take(env.server.pid), time.monotonic()
    for tok in tokens:
        visitor = rtc.Room()
        started = time.perf_counter()
        await visitor.connect(env.ws_url, tok)
        times.append(time.perf_counter() - started)
        await visitor.disconnect()
    window = Window.since(env.server, before, began)
    ordered = sorted(times)
    p50 = percentile(ordered, 0.5) * 1000
    return {
        "joins": joins,
        "p50_ms": p50,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
        "server_cpu": window.server_cpu,
        "client_cpu": window.client_cpu,
        "note": cpu_note(window),
        "check": {
            "name": "connect_p50_ms",
            "value": p50,
            "target": TARGET_CONNECT_P50_MS,
            "pass": p50 <= TARGET_CONNECT_P50_MS,
        },
    }


# ---------------------------------------------------------------------------------------------- delivery


class Counters:
    """Cumulative counts (a dataclass of numbers); `minus` gives what was counted between two readings."""

    def minus(self, other: Self) -> Self:
        return type(self)(*(a - b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))


@dataclass(frozen=True)
class Totals(Counters):
    """What subscribers got so far, summed: from their inbound-rtp stats and from their AudioStreams."""

    packets: int = 0
    lost: int = 0
    samples: int = 0
    concealed: int = 0  # samples the decoder invented for missing packets (silent ones aside)
    frames: int = 0
    loud: int = 0


async def received(clients: Sequence[Client]) -> Totals:
    inbound = [s for client in clients for s in await client.inbound_audio()]
    return Totals(
        sum(s.received.packets_received for s in inbound),
        sum(s.received.packets_lost for s in inbound),
        sum(s.inbound.total_samples_received for s in inbound),
        sum(s.inbound.concealed_samples - s.inbound.silent_concealed_samples for s in inbound),
        sum(client.total_frames() for client in clients),
        sum(client.total_loud() for client in clients),
    )


def delivery(got: Totals, streams: int, seconds: float, sent: int) -> dict[str, Any]:
    """What receivers got of `streams` continuous tones over `seconds`: RTP packets against the `sent`
    10 ms frames each stream was fed (so a late sender is not a gap), AudioStream frames and frames that
    carry the tone against real time; and the share of decoded samples that were concealment."""
    if not streams:
        return {"packets": None, "frames": None, "audible": None, "concealed": None, "lost": 0}
    return {
        "packets": got.packets / (streams * sent * FRAME_S / PACKET_S) if sent else None,
        "frames": got.frames / (streams * seconds / FRAME_S),
        "audible": got.loud / (streams * seconds / FRAME_S),
        "concealed": got.concealed / got.samples if got.samples else None,
        "lost": got.lost,
    }


def has_gaps(row: dict[str, Any]) -> bool:
    shares = [row[key] for key in ("packets", "frames", "audible") if row[key] is not None]
    return (bool(shares) and min(shares) < 1 - GAP) or (row["concealed"] or 0) > GAP


# ---------------------------------------------------------------------------------------------- relay


async def phase_relay(env: Env, counts: Sequence[int], seconds: float) -> dict[str, Any]:
    publisher = await join(env, "relay", "publisher", subscribe=False)
    tone = Tone()
    await tone.publish(publisher)
    tone.start()
    subscribers: list[Client] = []
    rows: list[dict[str, Any]] = []
    try:
        for n in counts:
            while len(subscribers) < n:
                subscribers.append(
                    await join(env, "relay", f"sub-{len(subscribers)}", subscribe=True, ear=True)
                )
            await wait_for(lambda: all(s.total_loud() >= 20 for s in subscribers), f"{n} subscribers' audio")
            await asyncio.sleep(SETTLE)
            before = await received(subscribers)
            late_before, sent_before = tone.late, tone.frames
            window = await idle_window(env.server, seconds)
            after = await received(subscribers)
            sent = tone.frames - sent_before
            rows.append(
                {
                    "subscribers": n,
                    "server_cpu": window.server_cpu,
                    "client_cpu": window.client_cpu,
                    "other_cpu": window.other_cpu,
                    **delivery(after.minus(before), n, window.seconds, sent),
                    "late_frames": tone.late - late_before,
                    "note": cpu_note(window),
                }
            )
    finally:
        await tone.stop()
        for client in [publisher, *subscribers]:
            await client.close()
    return {"seconds": seconds, "rows": rows, **cpu_per_stream(rows, "relay_cpu_per_stream")}


def cpu_per_stream(rows: Sequence[dict[str, Any]], check: str) -> dict[str, Any]:
    """Server CPU per subscribed stream from rows of one publisher and N subscribers: each further
    subscriber's share past the first (the first also starts the subscriber side), a least-squares slope,
    and the publisher's own ingest."""
    by_n = {row["subscribers"]: row["server_cpu"] for row in rows}
    increments = {
        n: (cpu - by_n[1]) / (n - 1) for n, cpu in by_n.items() if n > 1 and 1 in by_n and cpu is not None
    }
    slope = fitted_slope([(n, cpu) for n, cpu in by_n.items() if n >= 1 and cpu is not None])
    headline = increments[max(increments)] if increments else slope
    if headline is None and by_n.get(0) is not None and max(by_n) > 0 and by_n[max(by_n)] is not None:
        headline = (by_n[max(by_n)] - by_n[0]) / max(by_n)  # no N = 1 row: against the publisher alone
    base = by_n.get(0)
    if base is None and slope is not None and by_n.get(1) is not None:
        base = by_n[1] - slope
    result: dict[str, Any] = {
        "increments": increments,
        "slope": slope,
        "ingest_base": base,
        "ingest_base_measured": 0 in by_n,
    }
    if headline is not None:
        result["check"] = {
            "name": check,
            "value": headline,
            "target": TARGET_CPU_PER_STREAM,
            "pass": headline <= TARGET_CPU_PER_STREAM,
        }
    return result


def fitted_slope(points: Sequence[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else None


# ---------------------------------------------------------------------------------------------- latency


class Stamped(Protocol):
    @property
    def timestamp(self) -> int: ...


Timed = TypeVar("Timed", bound=Stamped)


@dataclass(frozen=True)
class Packet:
    at: float  # kernel receive time on loopback, converted to this process's monotonic clock
    ssrc: int
    timestamp: int
    size: int  # UDP payload bytes (SRTP: header, encrypted payload, tag)


@dataclass
class LoopbackCapture:
    """RTP packets seen on `lo`, timed by the kernel (SO_TIMESTAMPNS). SRTP leaves RTP headers in the
    clear, so SSRC and RTP timestamp identify a packet and the copy the server relays of it."""

    packets: list[Packet] = field(default_factory=list)
    error: str | None = None
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _offset: float = 0.0

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind(("lo", 0))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.settimeout(0.2)
        except (OSError, AttributeError) as exc:  # no CAP_NET_RAW, or not Linux
            self.error = f"no loopback capture ({exc})"
            return
        self._offset = time.time() - time.monotonic()  # the kernel stamps CLOCK_REALTIME
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="loopback-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        ancillary = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, anc, _, address = self._sock.recvmsg(2048, ancillary)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] != PACKET_HOST:  # loopback shows each packet twice: outgoing and incoming
                continue
            payload = udp_payload(data)
            # RTP, not RTCP (RFC 7983: first byte 128-191; RTCP packet types 192-223)
            if payload is None or len(payload) < 12 or payload[0] >> 6 != 2 or 192 <= payload[1] <= 223:
                continue
            wanted = (socket.SOL_SOCKET, SO_TIMESTAMPNS)
            stamp = next((value for level, kind, value in anc if (level, kind) == wanted), None)
            if stamp is None:
                continue
            seconds, nanoseconds = struct.unpack("qq", stamp[:16])
            rtp_timestamp, ssrc = struct.unpack_from("!II", payload, 4)
            at = seconds + nanoseconds / 1e9 - self._offset
            self.packets.append(Packet(at, ssrc, rtp_timestamp, len(payload)))


def udp_payload(frame: bytes) -> bytes | None:
    ethertype = int.from_bytes(frame[12:14])
    if ethertype == ETH_IPV4 and frame[23] == UDP:
        return frame[14 + (frame[14] & 0x0F) * 4 + 8 :]
    if ethertype == ETH_IPV6 and frame[20] == UDP:
        return frame[14 + 40 + 8 :]
    return None


def relay_residence(ingress: Sequence[Packet], egress: Sequence[Packet]) -> list[tuple[Packet, Packet]]:
    """Pairs each relayed packet with the packet it came from. The relay keeps the RTP timestamps up to a
    constant (its sender adds a random origin), found as the commonest difference between a relayed packet
    and the last packet that arrived before it."""
    differences: Counter[int] = Counter()
    i = 0
    for out in egress:
        while i + 1 < len(ingress) and ingress[i + 1].at <= out.at:
            i += 1
        if ingress and ingress[i].at <= out.at:
            differences[(out.timestamp - ingress[i].timestamp) % (1 << 32)] += 1
    if not differences:
        return []
    return shifted_pairs(ingress, egress, differences.most_common(1)[0][0])


def shifted_pairs(ingress: Sequence[Timed], egress: Sequence[Timed], shift: int) -> list[tuple[Timed, Timed]]:
    """Each relayed item with the item it came from: the one whose RTP timestamp is `shift` less."""
    by_timestamp = {item.timestamp: item for item in ingress}
    pairs = []
    for out in egress:
        source = by_timestamp.get((out.timestamp - shift) % (1 << 32))
        if source is not None:
            pairs.append((source, out))
    return pairs


def summary_ms(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min": ordered[0] * 1000,
        "p50": percentile(ordered, 0.5) * 1000,
        "p99": percentile(ordered, 0.99) * 1000,
        "max": ordered[-1] * 1000,
    }


async def phase_latency(env: Env, bursts: int) -> dict[str, Any]:
    capture = LoopbackCapture()
    capture.start()
    publisher = await join(env, "latency", "publisher", subscribe=False)
    listener = await join(env, "latency", "listener", subscribe=True, ear=True)
    tone = Tone(period=50, burst=10)  # 100 ms of tone every 500 ms, silence between
    try:
        await tone.publish(publisher)
        tone.start()
        await wait_for(lambda: len(listener.onsets) >= 2, "the listener to hear two bursts")
        first = len(tone.onsets)  # the bursts before this one warmed the path up
        await wait_for(lambda: len(tone.onsets) >= first + bursts + 1, "the bursts", 2 + bursts * 0.6)
        await asyncio.sleep(0.3)  # the last burst reaches the listener
        inbound = await listener.inbound_audio()
        [pub_ssrc] = await publisher.outbound_ssrcs()
    finally:
        await tone.stop()
        capture.stop()
        for client in (publisher, listener):
            await client.close()
    emitted = tone.onsets[first : first + bursts]
    heard = sorted(listener.onsets)
    end_to_end: list[tuple[float, float]] = []
    for at in emitted:
        match = next((h for h in heard if at < h < at + 0.4), None)
        if match is not None:
            end_to_end.append((at, match))
    jitter_buffer = None
    if inbound and inbound[0].inbound.jitter_buffer_emitted_count:
        stats = inbound[0].inbound
        jitter_buffer = stats.jitter_buffer_delay / stats.jitter_buffer_emitted_count * 1000
    result: dict[str, Any] = {
        "bursts": len(emitted),
        "heard": len(end_to_end),
        "end_to_end": summary_ms([h - e for e, h in end_to_end]),
        "jitter_buffer_ms": jitter_buffer,
        "capture": capture.error,
    }
    if capture.error is None:
        sub_ssrc = inbound[0].stream.ssrc if inbound else None
        ingress = [p for p in capture.packets if p.ssrc == pub_ssrc]
        egress = [p for p in capture.packets if p.ssrc == sub_ssrc]
        pairs = relay_residence(ingress, egress)
        result["packets"] = {"in": len(ingress), "out": len(egress), "paired": len(pairs)}
        result["relay"] = summary_ms([out.at - source.at for source, out in pairs])
        result["stages"] = stages(end_to_end, pairs)
        if not pairs:
            result["capture"] = "no relayed packet could be paired with its source"
    added = result.get("relay")
    if added is not None:
        result["check"] = {
            "name": "relay_added_latency_p99_ms",
            "value": added["p99"],
            "target": TARGET_ADDED_MS,
            "pass": added["p99"] <= TARGET_ADDED_MS,
        }
    return result


def stages(
    end_to_end: Sequence[tuple[float, float]], pairs: Sequence[tuple[Packet, Packet]]
) -> dict[str, Any] | None:
    """Splits each burst's end-to-end time at the wire: the burst's first packet is the first one after
    its emission that is much larger than a packet of silence (Opus spends few bytes on silence)."""
    if not pairs:
        return None
    silence = percentile(sorted(source.size for source, _ in pairs), 0.25)
    loud = [(source, out) for source, out in pairs if source.size > silence + 20]
    sender, relay, receiver = [], [], []
    for emitted, heard in end_to_end:
        first = next(((s, o) for s, o in loud if emitted < s.at < heard), None)
        if first is not None:
            source, out = first
            sender.append(source.at - emitted)
            relay.append(out.at - source.at)
            receiver.append(heard - out.at)
    return {
        "bursts": len(sender),
        "sender": summary_ms(sender),
        "relay": summary_ms(relay),
        "receiver": summary_ms(receiver),
    }


# ---------------------------------------------------------------------------------------------- capacity


async def phase_capacity(env: Env, most: int, step: int, seconds: float, budget: float) -> dict[str, Any]:
    started = time.monotonic()
    listener = await join(env, "capacity", "listener", subscribe=True, ear=True)
    tone = Tone()  # one source feeds every publisher's track: each room still encodes and sends its own
    tone.start()
    publishers: list[Client] = []
    silent: list[str] = []  # subscribed tracks the listener never heard
    rows: list[dict[str, Any]] = []
    limit, stopped_by = None, f"the bound of {most} publishers"
    try:
        while len(publishers) < most:
            if time.monotonic() - started > budget:
                stopped_by = f"the phase's {budget:g} s budget"
                break
            # One at a time, each heard before the next one publishes: tracks a listener subscribes to in
            # quick succession can stay silent, which would measure that, not capacity (see the note).
            for _ in range(min(step, most - len(publishers))):
                client = await join(env, "capacity", f"pub-{len(publishers)}", subscribe=False)
                publishers.append(client)
                sid = (await tone.publish(client)).sid
                try:
                    await wait_for(lambda: listener.loud.get(sid, 0) >= 5, "a new publisher", 5.0)  # noqa: B023
                except RuntimeError:
                    silent.append(sid)
            count = len(publishers)
            await asyncio.sleep(SETTLE)
            before, late_before, sent_before = await received([listener]), tone.late, tone.frames
            window = await idle_window(env.server, seconds)
            got, sent = (await received([listener])).minus(before), tone.frames - sent_before
            row = {
                "publishers": count,
                "server_cpu": window.server_cpu,
                "client_cpu": window.client_cpu,
                "other_cpu": window.other_cpu,
                **delivery(got, count, window.seconds, sent),
                "silent_tracks": len(silent),
                "late_frames": tone.late - late_before,
            }
            rows.append(row)
            gaps = has_gaps(row)
            server_full = window.server_cpu is not None and window.server_cpu >= SERVER_FULL
            client_full = window.client_cpu >= BUSY_CPU
            if gaps or server_full or client_full:
                reasons = []
                if gaps:
                    reasons.append("the listener saw gaps")
                if server_full:
                    reasons.append(f"the server used {percent(window.server_cpu)} of its core")
                if client_full:
                    reasons.append(f"the clients used {percent(window.client_cpu)} of theirs")
                stopped_by = " and ".join(reasons)
                limit = "server" if server_full else "client" if client_full else "gaps"
                break
    finally:
        await tone.stop()
        for client in [listener, *publishers]:
            await client.close()
    clean = [row["publishers"] for row in rows if not has_gaps(row)]
    points = [(row["publishers"], row["server_cpu"]) for row in rows if row["server_cpu"] is not None]
    slope = fitted_slope(points)
    extrapolated = None
    if slope and slope > 0:
        intercept = statistics.fmean(y for _, y in points) - slope * statistics.fmean(x for x, _ in points)
        extrapolated = int((SERVER_FULL - intercept) / slope)
    return {
        "seconds": seconds,
        "rows": rows,
        "max_clean_publishers": max(clean, default=0),
        "server_cpu_per_publisher": slope,
        "extrapolated_server_limit": extrapolated,
        "silent_tracks": len(silent),
        "stopped_by": stopped_by,
        "limit": limit,
    }


# ---------------------------------------------------------------------------------------------- video


class Camera(PacedSource):
    """One VideoSource fed VIDEO_WIDTH x VIDEO_HEIGHT I420 frames at VIDEO_FPS: a few precomputed frames
    of noise over a gradient, cycled, so that every frame differs and the encoder spends the bitrate a
    busy 720p camera does (a still picture would cost next to nothing)."""

    interval = 1 / VIDEO_FPS

    def __init__(self) -> None:
        super().__init__()
        self.source = rtc.VideoSource(VIDEO_WIDTH, VIDEO_HEIGHT)
        rng = np.random.default_rng(13)
        luma = np.add.outer(np.arange(VIDEO_HEIGHT) // 3, np.arange(VIDEO_WIDTH) // 6).astype(np.int16)
        chroma = np.full(VIDEO_WIDTH * VIDEO_HEIGHT // 2, 128, dtype=np.uint8).tobytes()
        self._frames = [
            rtc.VideoFrame(
                VIDEO_WIDTH,
                VIDEO_HEIGHT,
                rtc.VideoBufferType.I420,
                np.clip(luma + rng.integers(-6, 6, luma.shape), 0, 255).astype(np.uint8).tobytes() + chroma,
            )
            for _ in range(VIDEO_DISTINCT_FRAMES)
        ]

    async def publish(self, client: Client) -> rtc.LocalTrackPublication:
        track = rtc.LocalVideoTrack.create_video_track("camera", self.source)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            simulcast=False,
            video_codec=rtc.VideoCodec.VP8,
            video_encoding=rtc.VideoEncoding(max_bitrate=VIDEO_MAX_BITRATE, max_framerate=VIDEO_FPS),
            # libwebrtc would otherwise scale a 720p camera down under CPU or bandwidth pressure.
            degradation_preference=rtc.DegradationPreference.MAINTAIN_RESOLUTION,
        )
        publication = await client.room.local_participant.publish_track(track, options)
        self.start()
        return publication

    async def _capture(self, index: int) -> None:
        frame = self._frames[index % len(self._frames)]
        self.source.capture_frame(frame, timestamp_us=int(time.monotonic() * 1e6))

    async def _close(self) -> None:
        await self.source.aclose()


async def video_stats(client: Client, report: str) -> list[Any]:
    """The client's video RTP stream stats: `outbound_rtp` of its publisher connection or `inbound_rtp`
    of its subscriber connection."""
    stats = await client.room.get_rtc_stats()
    side = stats.publisher_stats if report == "outbound_rtp" else stats.subscriber_stats
    return [
        getattr(s, report)
        for s in side
        if s.WhichOneof("stats") == report and getattr(s, report).stream.kind == "video"
    ]


@dataclass(frozen=True)
class VideoTotals(Counters):
    """What the publisher's encoder sent and what every subscriber decoded so far."""

    sent_bytes: int = 0
    sent_frames: int = 0
    decoded: int = 0
    received_bytes: int = 0
    lost: int = 0


async def video_totals(publisher: Client, subscribers: Sequence[Client]) -> VideoTotals:
    out = await video_stats(publisher, "outbound_rtp")
    inbound = [s for client in subscribers for s in await video_stats(client, "inbound_rtp")]
    return VideoTotals(
        sum(s.sent.bytes_sent for s in out),
        sum(s.outbound.frames_sent for s in out),
        sum(s.inbound.frames_decoded for s in inbound),
        sum(s.inbound.bytes_received for s in inbound),
        sum(s.received.packets_lost for s in inbound),
    )


@dataclass(frozen=True)
class VideoFrameOnWire:
    """One video frame's RTP packets seen on `lo`: its RTP timestamp, first and last arrival, bytes."""

    timestamp: int
    first: float
    last: float
    size: int


def frames_on_wire(packets: Sequence[Packet]) -> list[VideoFrameOnWire]:
    spans: dict[int, tuple[float, float, int]] = {}
    for p in packets:
        first, last, size = spans.get(p.timestamp, (p.at, p.at, 0))
        spans[p.timestamp] = (min(first, p.at), max(last, p.at), size + p.size)
    return sorted((VideoFrameOnWire(ts, *span) for ts, span in spans.items()), key=lambda f: f.first)


def relayed_frames(
    ingress: Sequence[VideoFrameOnWire], egress: Sequence[VideoFrameOnWire]
) -> list[tuple[VideoFrameOnWire, VideoFrameOnWire]]:
    """Pairs each relayed frame with the frame it came from. The relay keeps RTP timestamps up to a
    constant; a frame may leave after the next one began arriving (retransmissions, or before frames
    left on their marker bit), so the last frame before a relayed one need not be its source (as it is
    for audio). The constant is instead the difference, among those
    between a relayed frame and the frames of the second before it, that maps the most relayed frames
    onto a frame that came in (the capture clock's jitter makes any other difference map few)."""
    candidates: set[int] = set()
    for out in egress[:30]:
        candidates.update(
            (out.timestamp - f.timestamp) % (1 << 32)
            for f in ingress
            if out.first - 1.0 <= f.first <= out.first
        )
    by_timestamp = {f.timestamp: f for f in ingress}

    def matches(shift: int) -> int:
        return sum((out.timestamp - shift) % (1 << 32) in by_timestamp for out in egress)

    if not candidates:
        return []
    return shifted_pairs(ingress, egress, max(candidates, key=matches))


async def video_on_wire(
    publisher: Client, subscriber: Client, seconds: float, meanwhile: Callable[[], Awaitable[Any]]
) -> dict[str, Any]:
    """Captures one subscriber's video on `lo` for `seconds` and while `meanwhile` runs, and times each
    frame through the server."""
    capture = LoopbackCapture()
    capture.start()
    try:
        await asyncio.sleep(seconds)
        await meanwhile()
    finally:
        capture.stop()
    if capture.error is not None:
        return {"capture": capture.error}
    [sent] = await video_stats(publisher, "outbound_rtp")
    [got] = await video_stats(subscriber, "inbound_rtp")
    ingress = frames_on_wire([p for p in capture.packets if p.ssrc == sent.stream.ssrc])
    egress = frames_on_wire([p for p in capture.packets if p.ssrc == got.stream.ssrc])
    pairs = relayed_frames(ingress, egress)
    intervals = sorted(b.first - a.first for a, b in itertools.pairwise(ingress))
    largest = max(ingress, key=lambda f: f.size, default=None)
    return {
        # A keyframe (asked for by each late joiner) can be larger than the rest, and take longer to send.
        "largest_frame": {"bytes": largest.size, "ms": (largest.last - largest.first) * 1000}
        if largest
        else None,
        "capture": None if pairs else "no relayed frame could be paired with its source",
        "frames": {"in": len(ingress), "out": len(egress), "paired": len(pairs)},
        # A subscriber has a frame once its last packet came: what the relay adds to that.
        "whole_frame": summary_ms([out.last - source.last for source, out in pairs]),
        "first_packet": summary_ms([out.first - source.first for source, out in pairs]),
        "frame_interval_ms": percentile(intervals, 0.5) * 1000 if intervals else None,
    }


@dataclass(frozen=True)
class LateJoin:
    """Seconds from a late joiner's connect() call to its return, and to its first decoded frame; and
    from its subscription (the SDK's track_subscribed) to that frame."""

    connected: float
    decoded: float
    decoded_after_subscription: float


async def late_join(env: Env, index: int) -> LateJoin:
    """A participant joins the running video room and decodes one frame."""
    subscribed: asyncio.Future[tuple[float, rtc.Track]] = asyncio.get_running_loop().create_future()

    def on_track(track: rtc.Track, *_: Any) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO and not subscribed.done():
            subscribed.set_result((time.monotonic(), track))

    room = rtc.Room()
    room.on("track_subscribed", on_track)
    started = time.monotonic()
    try:
        await room.connect(env.ws_url, token(env, f"{env.prefix}-video", f"late-{index}"))
        connected_at = time.monotonic()
        subscribed_at, track = await asyncio.wait_for(subscribed, SUBSCRIBE_DEADLINE)
        stream = rtc.VideoStream(track)
        try:
            await asyncio.wait_for(anext(aiter(stream)), SUBSCRIBE_DEADLINE)
            decoded_at = time.monotonic()
        finally:
            await stream.aclose()
    except TimeoutError as exc:
        raise RuntimeError(f"late joiner {index} got no video frame within {SUBSCRIBE_DEADLINE:g} s") from exc
    finally:
        with contextlib.suppress(Exception):
            await room.disconnect()
    return LateJoin(connected_at - started, decoded_at - started, decoded_at - subscribed_at)


async def phase_video(
    env: Env, counts: Sequence[int], seconds: float, wire_seconds: float, late_joins: int
) -> dict[str, Any]:
    publisher = await join(env, "video", "camera", subscribe=False)
    camera = Camera()
    subscribers: list[Client] = []
    rows: list[dict[str, Any]] = []
    wire: dict[str, Any] | None = None
    joins: list[LateJoin] = []
    try:
        await camera.publish(publisher)
        ramp_started = time.monotonic()

        async def ramped() -> bool:
            sent = await video_stats(publisher, "outbound_rtp")  # none before the first frame is sent
            return any(s.outbound.target_bitrate >= VIDEO_RAMP * VIDEO_MAX_BITRATE for s in sent)

        # The server's receiver sends its REMB with or without subscribers; a slow ramp is reported.
        with contextlib.suppress(RuntimeError):
            await wait_async(ramped, "the publisher's bitrate to ramp up", VIDEO_RAMP_DEADLINE)
        ramp = time.monotonic() - ramp_started
        for n in counts:
            while len(subscribers) < n:
                subscribers.append(await join(env, "video", f"viewer-{len(subscribers)}", subscribe=True))

            async def decoding(clients: list[Client] = subscribers) -> bool:
                return (await video_totals(publisher, clients)).decoded >= VIDEO_FPS * len(clients)

            await wait_async(decoding, f"{n} subscribers decoding video")
            await asyncio.sleep(SETTLE)
            before, late_before = await video_totals(publisher, subscribers), camera.late
            window = await idle_window(env.server, seconds)
            got = (await video_totals(publisher, subscribers)).minus(before)
            [sent] = await video_stats(publisher, "outbound_rtp")
            rows.append(
                {
                    "subscribers": n,
                    "server_cpu": window.server_cpu,
                    "client_cpu": window.client_cpu,
                    "other_cpu": window.other_cpu,
                    "sent_mbps": got.sent_bytes * 8 / window.seconds / 1e6,
                    "sent_fps": got.sent_frames / window.seconds,
                    "sent_size": f"{sent.outbound.frame_width}x{sent.outbound.frame_height}",
                    "target_mbps": sent.outbound.target_bitrate / 1e6,
                    "limited_by": rtc.stats.QualityLimitationReason.Name(
                        sent.outbound.quality_limitation_reason
                    ).removeprefix("LIMITATION_"),
                    "decoded": got.decoded / (n * got.sent_frames) if n and got.sent_frames else None,
                    "received_mbps": got.received_bytes * 8 / window.seconds / 1e6 / n if n else None,
                    "lost": got.lost,
                    "late_frames": camera.late - late_before,
                    "note": cpu_note(window),
                }
            )
            if n == 1 and wire is None:

                async def join_late() -> None:
                    # One at a time, while one subscriber runs: the stream has no keyframe due soon.
                    for index in range(late_joins):
                        await asyncio.sleep(LATE_JOIN_GAP)
                        joins.append(await late_join(env, index))

                wire = await video_on_wire(publisher, subscribers[0], wire_seconds, join_late)
    finally:
        await camera.stop()
        for client in [publisher, *subscribers]:
            await client.close()
    result: dict[str, Any] = {
        "seconds": seconds,
        "ramp_seconds": ramp,
        "rows": rows,
        **cpu_per_stream(rows, "video_cpu_per_stream"),
    }
    result["wire"] = wire
    if joins:
        result["late_join"] = {
            "connected": summary_ms([j.connected for j in joins]),
            "connect": summary_ms([j.decoded for j in joins]),
            "subscription": summary_ms([j.decoded_after_subscription for j in joins]),
        }
    return result


async def wait_async(condition: Callable[[], Any], what: str, deadline: float = SUBSCRIBE_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------------- report


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fraction(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def print_connect(r: dict[str, Any]) -> None:
    print(f"connect: {r['joins']} sequential joins, each a new rtc.Room() connected then disconnected")
    print("  (timed: Room.connect() call to return; includes the SDK's /rtc/v1 attempt, its 404, the /rtc")
    print("  WebSocket, the join response and ICE + DTLS of the subscriber peer connection)")
    print(
        f"  p50 {ms(r['p50_ms'])} ms   p99 {ms(r['p99_ms'])} ms   min {ms(r['min_ms'])} ms   "
        f"max {ms(r['max_ms'])} ms   server CPU {percent(r['server_cpu'])}   "
        f"client CPU {percent(r['client_cpu'])}"
    )
    if r["note"]:
        print(f"  note: {r['note']}")


DELIVERY_HEADER = f"{'packets':>9}{'frames':>9}{'audible':>9}{'concealed':>11}{'lost':>6}"


def delivery_columns(row: dict[str, Any]) -> str:
    if row["frames"] is None:
        return f"{'-':>9}{'-':>9}{'-':>9}{'-':>11}{'-':>6}"
    return (
        f"{fraction(row['packets']):>9}{fraction(row['frames']):>9}{fraction(row['audible']):>9}"
        f"{fraction(row['concealed']):>11}{row['lost']:>6}"
    )


def print_delivery_legend() -> None:
    print("  packets: RTP packets in the receivers' inbound-rtp stats / one per 20 ms the publisher fed, per")
    print("  stream; frames: their AudioStream frames / 100 per s per stream (the SDK's playout clock makes")
    print("  them, packets or not); audible: frames carrying the tone; concealed: decoded samples the jitter")
    print("  buffer had to invent")


def print_relay(r: dict[str, Any]) -> None:
    print("relay CPU: one publisher (48 kHz mono Opus tone, real-time 10 ms frames), N subscribers each")
    print(f"  consuming it through rtc.AudioStream; CPU over a {r['seconds']:g} s window per row")
    print(f"  {'subscribers':>11}{'server CPU':>12}{'client CPU':>12}{'other CPU':>11}" + DELIVERY_HEADER)
    for row in r["rows"]:
        print(
            f"  {row['subscribers']:>11}{fraction(row['server_cpu']):>12}{percent(row['client_cpu']):>12}"
            f"{percent(row['other_cpu']):>11}"
            + delivery_columns(row)
            + (f"   {row['late_frames']} frames sent late" if row["late_frames"] else "")
            + (f"   note: {row['note']}" if row["note"] else "")
        )
    print_delivery_legend()
    print_cpu_per_stream(r)


def print_cpu_per_stream(r: dict[str, Any]) -> None:
    cpu = {row["subscribers"]: row["server_cpu"] for row in r["rows"]}
    if cpu.get(0) is not None and cpu.get(1) is not None:
        print(f"  the first subscriber, cpu(1) - cpu(0): {fraction(cpu[1] - cpu[0])} of a core")
    for n, value in sorted(r["increments"].items()):
        print(f"  per subscribed stream, (cpu({n}) - cpu(1)) / {n - 1}: {fraction(value)} of a core")
    if r["slope"] is not None:
        print(f"  per subscribed stream, least-squares slope over N >= 1: {fraction(r['slope'])} of a core")
    if r["ingest_base"] is not None:
        how = "measured with no subscriber" if r["ingest_base_measured"] else "extrapolated to N = 0"
        print(f"  ingest base (the publisher alone, {how}): {fraction(r['ingest_base'])} of a core")


def print_latency(r: dict[str, Any]) -> None:
    for text in (
        "latency: the publisher plays silence with a 100 ms 1 kHz burst every 500 ms; a listener in this",
        "  process finds each burst's onset in its AudioStream frames (10 ms RMS above a tenth of the",
        "  tone's). End to end = onset frame received - its capture_frame call. Both SDK ends buffer (the",
        "  sender packs 20 ms Opus packets; the listener has a jitter buffer and 10 ms playout pulls), so",
        "  end to end is only an upper bound of what the relay adds. The relay's own share is measured on",
        "  the wire: a raw socket on lo has the kernel stamp each publisher RTP packet reaching the server",
        "  and its relayed copy reaching the listener, paired by RTP timestamp (SRTP leaves headers in the",
        "  clear). Without a server the peers would exchange the same packets directly over loopback, so",
        "  this residence time is what the relay adds to the path (were no packet lost, and none is here).",
    ):
        print(text)
    e2e = r["end_to_end"]
    print(f"  bursts heard: {r['heard']} of {r['bursts']}")
    stages_ = r.get("stages") or {}
    print_timings(
        [
            ("end to end, per burst (upper bound)", e2e),
            ("  publisher SDK: capture_frame -> on the wire", stages_.get("sender")),
            ("  server: in -> relayed out (burst onsets)", stages_.get("relay")),
            ("  listener SDK: on the wire -> AudioStream", stages_.get("receiver")),
            ("server residence, every relayed packet", r.get("relay")),
        ]
    )
    if r["jitter_buffer_ms"] is not None:
        print(f"  listener's average jitter-buffer delay (inbound-rtp stats): {ms(r['jitter_buffer_ms'])} ms")
    if "packets" in r:
        p = r["packets"]
        print(f"  wire: {p['in']} packets in, {p['out']} relayed out, {p['paired']} paired")
    if r["capture"]:
        print(f"  note: {r['capture']}: only the end-to-end upper bound is measured")


def print_capacity(r: dict[str, Any]) -> None:
    print("capacity: one listener subscribes to every track; publishers (auto_subscribe off, each its own")
    print("  Room sending a continuous Opus tone) join one by one, each heard before the next; every few a")
    print(f"  {r['seconds']:g} s window compares what the listener got with what was sent")
    header = f"  {'publishers':>10}{'server CPU':>12}{'client CPU':>12}{'other CPU':>11}"
    print(header + DELIVERY_HEADER)
    for row in r["rows"]:
        print(
            f"  {row['publishers']:>10}{fraction(row['server_cpu']):>12}{percent(row['client_cpu']):>12}"
            f"{percent(row['other_cpu']):>11}"
            + delivery_columns(row)
            + (f"   {row['late_frames']} frames sent late" if row["late_frames"] else "")
        )
    print_delivery_legend()
    print(f"  stopped by {r['stopped_by']}")
    if r["server_cpu_per_publisher"] is not None:
        print(
            f"  server CPU per added publisher (its ingest and one relayed stream, least squares): "
            f"{fraction(r['server_cpu_per_publisher'])} of a core"
        )
    if r["extrapolated_server_limit"] is not None and r["limit"] != "server":
        print(
            f"  extrapolated, not measured: the server's core would be {SERVER_FULL:.0%} busy at about "
            f"{r['extrapolated_server_limit']} publishers"
        )
    if r["silent_tracks"]:
        print(f"  note: {r['silent_tracks']} subscribed track(s) stayed silent at the listener: the server")
        print("  relayed none of their packets to it (seen when several tracks are subscribed in quick")
        print("  succession, before the listener's subscriber connection has settled)")


def print_video(r: dict[str, Any]) -> None:
    size = f"{VIDEO_WIDTH}x{VIDEO_HEIGHT}"
    for text in (
        f"video: one camera (rtc.VideoSource, {size} noise over a gradient at {VIDEO_FPS} fps, VP8,",
        f"  no simulcast, max {VIDEO_MAX_BITRATE / 1e6:g} Mbit/s, resolution kept), N subscribers that",
        "  decode it (libwebrtc decodes every subscribed video track); server CPU over a "
        f"{r['seconds']:g} s window per row,",
        f"  once the publisher's bitrate estimate reached {VIDEO_RAMP:.0%} of the maximum: "
        f"{r['ramp_seconds']:.1f} s after it published (limit {VIDEO_RAMP_DEADLINE:g} s)",
    ):
        print(text)
    print(
        f"  {'subscribers':>11}{'server CPU':>12}{'client CPU':>12}{'other CPU':>11}{'target':>8}{'sent':>8}"
        f"{'fps':>6}{'size':>10}{'decoded':>9}{'each got':>10}{'lost':>6}  limited by"
    )
    for row in r["rows"]:
        received = "-" if row["received_mbps"] is None else f"{row['received_mbps']:.2f}M"
        print(
            f"  {row['subscribers']:>11}{fraction(row['server_cpu']):>12}{percent(row['client_cpu']):>12}"
            f"{percent(row['other_cpu']):>11}{row['target_mbps']:>7.2f}M{row['sent_mbps']:>7.2f}M"
            f"{row['sent_fps']:>6.1f}{row['sent_size']:>10}{fraction(row['decoded']):>9}{received:>10}"
            f"{row['lost']:>6}  {row['limited_by']}"
            + (f"   {row['late_frames']} frames captured late" if row["late_frames"] else "")
            + (f"   note: {row['note']}" if row["note"] else "")
        )
    for text in (
        "  target: the publisher's bitrate estimate at the end of the row; sent: its bitrate (outbound-rtp",
        "  bytes) and frames per second; decoded: frames each subscriber decoded / frames sent; each got:",
        "  bitrate per subscriber (inbound-rtp bytes); limited by: libwebrtc's quality limitation reason",
    ):
        print(text)
    print_cpu_per_stream(r)
    wire = r.get("wire")
    if wire:
        for text in (
            "  on the wire (one subscriber, a raw socket on lo as in the latency phase, a few seconds and",
            "  during the late joins below): each relayed frame paired with its source frame by RTP",
            "  timestamp. The server reassembles a whole frame before it relays it (the frame is complete",
            "  with its last packet, the RTP marker bit), then packetizes it again",
        ):
            print(text)
        print_timings(
            [
                ("last packet in -> last packet out", wire.get("whole_frame")),
                ("first packet in -> first packet out", wire.get("first_packet")),
            ]
        )
        if "frames" in wire:
            f = wire["frames"]
            print(
                f"  wire: {f['in']} frames in, {f['out']} relayed out, {f['paired']} paired; "
                f"median interval between frames {ms(wire['frame_interval_ms'])} ms"
            )
        if wire.get("largest_frame"):
            big = wire["largest_frame"]
            print(
                f"  largest frame from the publisher: {big['bytes'] / 1000:.0f} kB, "
                f"{ms(big['ms'])} ms from its first packet to its last"
            )
        if wire["capture"]:
            print(f"  note: {wire['capture']}")
    late = r.get("late_join")
    if late:
        print(
            "  late joins, one at a time while the stream runs, each a second after the last one left: a new"
        )
        print(
            "  Room connects, subscribes and decodes its first frame through rtc.VideoStream (the server asks"
        )
        print("  the publisher for a keyframe)")
        print_timings(
            [
                ("connect() returns (the floor)", late["connected"]),
                ("connect() -> first decoded frame", late["connect"]),
                ("subscription -> first decoded frame", late["subscription"]),
            ]
        )


def print_timings(rows: Sequence[tuple[str, dict[str, float] | None]]) -> None:
    """A table of `summary_ms` figures, one named row each (rows without figures left out)."""
    row = "  {:<46}{:>8}{:>8}{:>8}{:>8}{:>8}"
    print(row.format("", "n", "min ms", "p50 ms", "p99 ms", "max ms"))
    for name, s in rows:
        if s is not None:
            print(row.format(name, s["n"], ms(s["min"]), ms(s["p50"]), ms(s["p99"]), ms(s["max"])))


def check_lines(results: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """The report's last lines: each figure with its target (a verdict) or, without a target, none."""
    lines: list[tuple[str, bool | None]] = []
    r = results.get("connect", {})
    if "check" in r:
        text = f"connect p50 = {ms(r['p50_ms'])} ms, p99 {ms(r['p99_ms'])} ms"
        lines.append((f"{text} (target p50 ≤ {TARGET_CONNECT_P50_MS:g} ms)", r["check"]["pass"]))
    r = results.get("relay", {})
    if "check" in r:
        lines.append(cpu_check_line("relay CPU per subscribed stream", r))
    r = results.get("latency", {})
    if "check" in r:
        relay = r["relay"]
        text = f"added one-way latency (server residence, on the wire) p50 {ms(relay['p50'])} ms"
        lines.append(
            (f"{text}, p99 {ms(relay['p99'])} ms (target p99 ≤ {TARGET_ADDED_MS:g} ms)", r["check"]["pass"])
        )
    if r.get("end_to_end"):
        p50 = r["end_to_end"]["p50"]
        within = "within" if p50 <= TARGET_ADDED_MS else "over"
        text = f"end-to-end one-way latency p50 {ms(p50)} ms: an upper bound of the added latency"
        lines.append((f"{text} ({within} {TARGET_ADDED_MS:g} ms; both SDK ends' buffering included)", None))
    r = results.get("video", {})
    if "check" in r:
        lines.append(cpu_check_line("video relay CPU per subscribed 720p stream", r))
    wire = r.get("wire") or {}
    if wire.get("whole_frame"):
        frame = wire["whole_frame"]
        text = f"video frame in the server, last packet in -> last packet out: p50 {ms(frame['p50'])} ms"
        floor = ms(wire["frame_interval_ms"])
        lines.append((f"{text}, p99 {ms(frame['p99'])} ms (floor 0; one frame interval is {floor} ms)", None))
    if r.get("late_join"):
        late = r["late_join"]
        after, total, floor_ = late["subscription"], late["connect"], late["connected"]
        text = f"late join: connect() -> first decoded frame p50 {ms(total['p50'])} ms"
        text += f" (subscription -> first decoded frame p50 {ms(after['p50'])} ms, max {ms(after['max'])} ms)"
        floor = f"floor: connect() itself, p50 {ms(floor_['p50'])} ms"
        target = f"target: subscription -> first frame ≤ {TARGET_LATE_JOIN_MS:g} ms"
        lines.append((f"{text} ({floor}; {target})", after["max"] <= TARGET_LATE_JOIN_MS))
    r = results.get("capacity", {})
    if "rows" in r:
        text = f"capacity: {r['max_clean_publishers']} publishing participants (+1 listener) without gaps"
        lines.append((f"{text} in one audio room on one server core; limit: {capacity_limit(r)}", None))
    return lines


def cpu_check_line(what: str, r: dict[str, Any]) -> tuple[str, bool | None]:
    n = max(r["increments"]) if r["increments"] else None
    top = max(row["subscribers"] for row in r["rows"])
    how = (
        f"(cpu({n}) - cpu(1)) / {n - 1}"
        if n
        else "slope"
        if r["slope"] is not None
        else f"(cpu({top}) - cpu(0)) / {top}"
    )
    text = f"{what} = {fraction(r['check']['value'])} of a core, {how}"
    return (f"{text} (target ≤ {TARGET_CPU_PER_STREAM:.0%})", r["check"]["pass"])


def capacity_limit(r: dict[str, Any]) -> str:
    last = r["rows"][-1] if r["rows"] else None
    if r["limit"] is None or last is None:
        text = f"none reached, stopped by {r['stopped_by']} (a lower bound)"
        if last is not None and last["client_cpu"] >= CLIENT_NEARLY_FULL:
            text += f"; the clients already used {percent(last['client_cpu'])} of their core"
        return text
    server, client = last["server_cpu"], last["client_cpu"]
    if r["limit"] == "server":
        return f"server CPU ({percent(server)} of its core)"
    if r["limit"] == "client":
        return f"client CPU ({percent(client)} of its core): a lower bound of the server's capacity"
    if r["silent_tracks"]:
        return f"gaps from {r['silent_tracks']} never-relayed track(s), not CPU (server at {percent(server)})"
    text = f"gaps at the listener with the server at {percent(server)} and the clients at {percent(client)}"
    if client >= CLIENT_NEARLY_FULL or last["late_frames"]:
        text += f", {last['late_frames']} frames sent late: most likely the clients' core, not the server"
    return text


def print_report(info: dict[str, Any], setup: dict[str, Any], results: dict[str, Any]) -> None:
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  python={info['python']}")
    print(
        f"setup:   server {setup['server']} ({setup['url']}), clients {setup['client']} "
        f"(livekit rtc SDK {setup['sdk']}, {setup['threads']} threads in this process)"
    )
    printers = {
        "connect": print_connect,
        "relay": print_relay,
        "latency": print_latency,
        "capacity": print_capacity,
        "video": print_video,
    }
    for phase, printer in printers.items():
        if phase in results and "error" not in results[phase]:
            print()
            printer(results[phase])
    print()
    for text, ok in check_lines(results):
        print(f"{text}  {verdict(ok)}" if ok is not None else text)
    for phase, r in results.items():
        if "error" in r:
            print(f"FAILED: {phase}: {r['error']}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default {','.join(PHASES)})",
    )
    parser.add_argument("--joins", type=int, default=50, help="timed sequential joins (default 50)")
    parser.add_argument(
        "--subscribers", default="0,1,4,8", help="subscriber counts of the relay phase (default 0,1,4,8)"
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds per relay-phase row (default 10)")
    parser.add_argument("--bursts", type=int, default=20, help="tone bursts timed by the latency phase")
    parser.add_argument("--max-publishers", type=int, default=20, help="capacity phase bound (default 20)")
    parser.add_argument("--step", type=int, default=4, help="publishers added per capacity step (default 4)")
    parser.add_argument(
        "--capacity-window", type=float, default=2.0, help="seconds measured per capacity step (default 2)"
    )
    parser.add_argument(
        "--capacity-budget", type=float, default=30.0, help="no new capacity step after this many seconds"
    )
    parser.add_argument(
        "--video-subscribers", default="0,1,4", help="subscriber counts of the video phase (default 0,1,4)"
    )
    parser.add_argument(
        "--wire-seconds", type=float, default=5.0, help="seconds of video captured on lo (default 5)"
    )
    parser.add_argument("--late-joins", type=int, default=10, help="late joiners timed by the video phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        parser.error(f"--phases takes some of {','.join(PHASES)}")
    args.phases = [p for p in PHASES if p in phases]
    try:
        args.subscribers = sorted({int(n) for n in args.subscribers.split(",")})
        args.video_subscribers = sorted({int(n) for n in args.video_subscribers.split(",")})
    except ValueError:
        parser.error("--subscribers and --video-subscribers take comma-separated counts")
    if (
        args.joins < 1
        or args.bursts < 1
        or args.step < 1
        or args.max_publishers < 1
        or min(args.subscribers) < 0
        or min(args.video_subscribers) < 0
        or args.late_joins < 0
    ):
        parser.error("counts must be positive")
    return args


async def bench(env: Env, args: argparse.Namespace, client_cpu: int | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runs: dict[str, Callable[[], Any]] = {
        "connect": lambda: phase_connect(env, args.joins),
        "relay": lambda: phase_relay(env, args.subscribers, args.window),
        "latency": lambda: phase_latency(env, args.bursts),
        "capacity": lambda: phase_capacity(
            env, args.max_publishers, args.step, args.capacity_window, args.capacity_budget
        ),
        "video": lambda: phase_video(
            env, args.video_subscribers, args.window, args.wire_seconds, args.late_joins
        ),
    }
    for phase in args.phases:
        try:
            results[phase] = await runs[phase]()
        except (RuntimeError, rtc.ConnectError, OSError, ValueError) as exc:
            results[phase] = {"error": f"{type(exc).__name__}: {exc}"}
        if client_cpu is not None:
            pin_all_threads(client_cpu)  # threads the SDK started since are pinned already; belt and braces
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The SDK logs each /rtc/v1 404 (it then falls back to /rtc, as intended) and teardown chatter.
    logging.getLogger("livekit").setLevel(logging.ERROR)
    info = machine()  # before pinning, so nproc counts the whole machine
    server_cpu, client_cpu = choose_cpus()
    extra = {"rtc": {"ice_addresses": ["127.0.0.1"]}}
    try:
        with own_server(server_cpu, extra) as server:
            # Pinned after the server started, so that the server does not inherit this affinity.
            if client_cpu is not None:
                pin_all_threads(client_cpu)
            env = Env(server, server.url.replace("http://", "ws://", 1), f"bench-{uuid.uuid4().hex[:8]}")
            results = asyncio.run(bench(env, args, client_cpu))
            threads = (
                pin_all_threads(client_cpu) if client_cpu is not None else len(os.listdir("/proc/self/task"))
            )
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    setup = {
        "url": server.url,
        "server": server.pinned,
        "client": f"pinned to CPU {client_cpu}" if client_cpu is not None else "sharing the CPU",
        "sdk": metadata.version("livekit"),
        "threads": threads,
    }
    if args.json:
        checks = [r["check"] for r in results.values() if "check" in r]
        print(json.dumps({"machine": info, "setup": setup, "phases": results, "checks": checks}, indent=2))
    else:
        print_report(info, setup, results)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
