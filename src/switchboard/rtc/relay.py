"""Audio relay without decoding: Opus RTP payloads from a publisher go to each subscriber as they arrive.

aiortc has no public API to forward RTP: its receiver always depayloads, jitter-buffers (≈80 ms) and
decodes. We replace the receiver's packet handler of a published audio track (so nothing is buffered or
decoded) and hand each Opus payload to the `OutboundAudio` slot of each subscriber; aiortc's sender
re-packetizes a pre-encoded `av.Packet` with its own SSRC and sequence numbers. This relies on aiortc
internals (`RTCRtpReceiver._handle_rtp_packet`, `RTCRtpTransceiver._codecs`), hence the pinned aiortc version.
"""

import asyncio
import fractions
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from switchboard.rtc.speakers import TrackLevel

log = logging.getLogger("switchboard.rtc")

OPUS_CLOCK = 48000
_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK)
# A subscriber that cannot keep up loses the oldest audio, not the newest: about one second of 20 ms frames.
_QUEUE_FRAMES = 50
_FRAME_SAMPLES = 960  # 20 ms at 48 kHz: the usual Opus frame, the gap left when a slot changes source


class OutboundAudio(MediaStreamTrack):
    """One audio sender slot of a subscriber connection: encoded Opus packets, never decoded.

    It lives as long as its transceiver and carries whichever published track is subscribed through it
    (`attach`), or nothing between two. aiortc's sender has one task that reads its track; a track that
    ends kills that task for good, so a slot reused for another track (a republished one, a re-subscribe)
    would stay silent. Timestamps continue across tracks, as one RTP stream.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_FRAMES)  # av.Packet, or None to end
        self.source: str | None = None
        """The track sid relayed through this slot now; None while it is free."""
        self._shift: int | None = None
        self._next_pts = 0

    def attach(self, track_sid: str) -> None:
        self.source = track_sid
        self._shift = None

    def detach(self) -> None:
        """Nothing more is sent until the next `attach`; what was queued is dropped."""
        self.source = None
        while not self._queue.empty():
            self._queue.get_nowait()

    def push(self, payload: bytes, pts: int) -> None:
        if self._shift is None:  # a new source: carry on from where the previous one stopped
            self._shift = self._next_pts - pts
        out = pts + self._shift
        self._next_pts = out + _FRAME_SAMPLES
        if self._queue.full():
            self._queue.get_nowait()
        packet = av.Packet(payload)
        packet.pts = out % (1 << 32)
        packet.time_base = _TIME_BASE
        self._queue.put_nowait(packet)

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


class AudioRelay:
    """One published audio track and the subscribers it is relayed to."""

    def __init__(
        self, track_sid: str, transceiver: RTCRtpTransceiver, level: TrackLevel | None = None
    ) -> None:
        self.track_sid = track_sid
        self.level = level
        """How loud the publisher speaks (active speakers), from the packets; None: not measured."""
        self.subscribers: dict[str, OutboundAudio] = {}
        self.ever_subscribed = False
        """Whether the publisher was told that a subscriber receives this track (`track_subscribed`)."""
        self._origin: int | None = None
        opus = [c.payloadType for c in transceiver._codecs if c.mimeType.lower() == "audio/opus"]
        self._payload_type = opus[0] if opus else None
        receiver = transceiver.receiver
        receiver._handle_rtp_packet = self._on_rtp  # type: ignore[method-assign]

    async def _on_rtp(self, packet: Any, arrival_time_ms: int) -> None:
        if packet.payload_type != self._payload_type or not packet.payload:
            return
        if self._origin is None:
            self._origin = packet.timestamp
        audio_level = packet.extensions.audio_level  # (voice activity, -dBov) when the client sends it
        if audio_level is not None and self.level is not None:
            self.level.observe_packet(audio_level[1], packet.timestamp, time.monotonic())
        pts = (packet.timestamp - self._origin) % (1 << 32)
        for track in self.subscribers.values():
            track.push(packet.payload, pts)

    def subscribe(self, subscriber_sid: str, slot: OutboundAudio) -> None:
        slot.attach(self.track_sid)
        self.subscribers[subscriber_sid] = slot

    def unsubscribe(self, subscriber_sid: str) -> OutboundAudio | None:
        slot = self.subscribers.pop(subscriber_sid, None)
        if slot is not None and slot.source == self.track_sid:
            slot.detach()
        return slot

    def close(self) -> None:
        for subscriber_sid in list(self.subscribers):
            self.unsubscribe(subscriber_sid)


class Publisher(Protocol):
    """Whom subscribers receive relayed tracks from: a participant, or its forward in another room."""

    @property
    def sid(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def relays(self) -> Mapping[str, AudioRelay]: ...

    def allows(self, subscriber: Any, track_sid: str) -> bool: ...

    def track_subscribed(self, relay: AudioRelay) -> None: ...
