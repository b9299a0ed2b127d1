"""Media relay without decoding: what a publisher sends goes to each subscriber as encoded frames.

Audio is relayed here (Opus RTP payloads, as they arrive); video in `video.py`, on the same slots.

aiortc has no public API to forward RTP: its receiver always depayloads, jitter-buffers (≈80 ms) and
decodes. We replace the receiver's packet handler of a published audio track (so nothing is buffered or
decoded) and hand each Opus payload to the `OutboundAudio` slot of each subscriber; aiortc's sender
re-packetizes a pre-encoded `av.Packet` with its own SSRC and sequence numbers. This relies on aiortc
internals (`RTCRtpReceiver._handle_rtp_packet`, `RTCRtpTransceiver._codecs`), hence the pinned aiortc version.
"""

import abc
import asyncio
import fractions
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from switchboard.rtc.speakers import TrackLevel

log = logging.getLogger("switchboard.rtc")

OPUS_CLOCK = 48000
# A subscriber that cannot keep up loses the oldest audio, not the newest: about one second of 20 ms frames.
_QUEUE_FRAMES = 50


class OutboundSlot(MediaStreamTrack):
    """One sender slot of a subscriber connection: encoded packets, never decoded.

    It lives as long as its transceiver and carries whichever published track is subscribed through it
    (`attach`), or nothing between two. aiortc's sender has one task that reads its track; a track that
    ends kills that task for good, so a slot reused for another track (a republished one, a re-subscribe)
    would stay silent. Timestamps continue across tracks, as one RTP stream.
    """

    time_base: fractions.Fraction
    frame_ticks: int
    """The usual time between two frames: the gap left when the slot changes source."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(capacity)  # av.Packet, or None to end
        self.relay: TrackRelay | None = None
        """The published track relayed through this slot now; None while it is free."""
        self._shift: int | None = None
        self._next_pts = 0

    @property
    def source(self) -> str | None:
        return self.relay.track_sid if self.relay is not None else None

    def attach(self, relay: "TrackRelay") -> None:
        self.relay = relay
        self._shift = None

    def detach(self) -> None:
        """Nothing more is sent until the next `attach`; what was queued is dropped."""
        self.relay = None
        self._drop_queued()

    def _drop_queued(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def _enqueue(self, payload: bytes, pts: int) -> bool:
        """Queue one encoded frame; False if the oldest queued one had to go to make room."""
        if self._shift is None:  # a new source: carry on from where the previous one stopped
            self._shift = self._next_pts - pts
        out = pts + self._shift
        self._next_pts = out + self.frame_ticks
        kept = True
        if self._queue.full():
            self._queue.get_nowait()
            kept = False
        packet = av.Packet(payload)
        packet.pts = out % (1 << 32)
        packet.time_base = self.time_base
        self._queue.put_nowait(packet)
        return kept

    @abc.abstractmethod
    def push(self, payload: bytes, pts: int, keyframe: bool = True) -> None:
        """One encoded frame of the attached track (`pts` in `time_base` units, from its first frame)."""

    async def recv(self) -> Any:  # aiortc's sender accepts an encoded av.Packet as well as a frame
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            self.detach()
            self._queue.put_nowait(None)
        super().stop()


class OutboundAudio(OutboundSlot):
    kind = "audio"
    time_base = fractions.Fraction(1, OPUS_CLOCK)
    frame_ticks = 960  # 20 ms at 48 kHz: the usual Opus frame

    def __init__(self) -> None:
        super().__init__(_QUEUE_FRAMES)

    def push(self, payload: bytes, pts: int, keyframe: bool = True) -> None:
        self._enqueue(payload, pts)  # a lost Opus frame is a short gap: the oldest simply goes


class TrackRelay(abc.ABC):
    """One published track and the subscribers it is relayed to, each through its own slot."""

    kind: str

    def __init__(self, track_sid: str) -> None:
        self.track_sid = track_sid
        self.level: TrackLevel | None = None
        """How loud the publisher speaks (active speakers), from the packets; None: not measured."""
        self.subscribers: dict[str, OutboundSlot] = {}
        self.ever_subscribed = False
        """Whether the publisher was told that a subscriber receives this track (`track_subscribed`)."""

    def fits(self, slot: OutboundSlot) -> bool:
        """Whether a free slot of a subscriber connection can carry this track (its kind and codec)."""
        return slot.kind == self.kind

    @abc.abstractmethod
    def open_slot(self, pc: RTCPeerConnection) -> tuple[RTCRtpTransceiver, OutboundSlot]:
        """A new sender on a subscriber connection, for tracks like this one."""

    def subscribe(self, subscriber_sid: str, slot: OutboundSlot) -> None:
        slot.attach(self)
        self.subscribers[subscriber_sid] = slot

    def unsubscribe(self, subscriber_sid: str) -> OutboundSlot | None:
        slot = self.subscribers.pop(subscriber_sid, None)
        if slot is not None and slot.relay is self:
            slot.detach()
        return slot

    def close(self) -> None:
        for subscriber_sid in list(self.subscribers):
            self.unsubscribe(subscriber_sid)


class AudioRelay(TrackRelay):
    """A published Opus track: each RTP payload goes to every subscriber as it arrives."""

    kind = "audio"

    def __init__(
        self, track_sid: str, transceiver: RTCRtpTransceiver, level: TrackLevel | None = None
    ) -> None:
        super().__init__(track_sid)
        self.level = level
        self._origin: int | None = None
        opus = [c.payloadType for c in transceiver._codecs if c.mimeType.lower() == "audio/opus"]
        self._payload_type = opus[0] if opus else None
        receiver = transceiver.receiver
        receiver._handle_rtp_packet = self._on_rtp  # type: ignore[method-assign]

    def open_slot(self, pc: RTCPeerConnection) -> tuple[RTCRtpTransceiver, OutboundSlot]:
        slot = OutboundAudio()
        return pc.addTransceiver(slot, direction="sendonly"), slot

    async def _on_rtp(self, packet: Any, arrival_time_ms: int) -> None:
        if packet.payload_type != self._payload_type or not packet.payload:
            return
        if self._origin is None:
            self._origin = packet.timestamp
        audio_level = packet.extensions.audio_level  # (voice activity, -dBov) when the client sends it
        if audio_level is not None and self.level is not None:
            self.level.observe_packet(audio_level[1], packet.timestamp, time.monotonic())
        pts = (packet.timestamp - self._origin) % (1 << 32)
        for slot in self.subscribers.values():
            slot.push(packet.payload, pts)


class Publisher(Protocol):
    """Whom subscribers receive relayed tracks from: a participant, or its forward in another room."""

    @property
    def sid(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def relays(self) -> Mapping[str, TrackRelay]: ...

    def allows(self, subscriber: Any, track_sid: str) -> bool: ...

    def track_subscribed(self, relay: TrackRelay) -> None: ...
