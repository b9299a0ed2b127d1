"""Audio relay without decoding: Opus RTP payloads from a publisher go to each subscriber as they arrive.

aiortc has no public API to forward RTP: its receiver always depayloads, jitter-buffers (≈80 ms) and
decodes. We replace the receiver's packet handler of a published audio track (so nothing is buffered or
decoded) and hand each Opus payload to one `RelayTrack` per subscriber; aiortc's sender re-packetizes a
pre-encoded `av.Packet` with its own SSRC and sequence numbers. This relies on aiortc internals
(`RTCRtpReceiver._handle_rtp_packet`, `RTCRtpTransceiver._codecs`), hence the pinned aiortc version.
"""

import asyncio
import fractions
import logging
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("switchboard.rtc")

OPUS_CLOCK = 48000
_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK)
# A subscriber that cannot keep up loses the oldest audio, not the newest: about one second of 20 ms frames.
_QUEUE_FRAMES = 50


class RelayTrack(MediaStreamTrack):
    """What one subscriber receives of one published track: encoded Opus packets, never decoded."""

    kind = "audio"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self._id = track_sid  # becomes the msid track id the client sees
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_FRAMES)  # av.Packet, or None to end

    def push(self, payload: bytes, pts: int) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        packet = av.Packet(payload)
        packet.pts = pts
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
        if self.readyState == "live" and not self._queue.full():
            self._queue.put_nowait(None)
        super().stop()


class AudioRelay:
    """One published audio track and the subscribers it is relayed to."""

    def __init__(self, track_sid: str, transceiver: RTCRtpTransceiver) -> None:
        self.track_sid = track_sid
        self.subscribers: dict[str, RelayTrack] = {}
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
        pts = (packet.timestamp - self._origin) % (1 << 32)
        for track in self.subscribers.values():
            track.push(packet.payload, pts)

    def subscribe(self, subscriber_sid: str) -> RelayTrack:
        track = RelayTrack(self.track_sid)
        self.subscribers[subscriber_sid] = track
        return track

    def unsubscribe(self, subscriber_sid: str) -> RelayTrack | None:
        track = self.subscribers.pop(subscriber_sid, None)
        if track is not None:
            track.stop()
        return track

    def close(self) -> None:
        for subscriber_sid in list(self.subscribers):
            self.unsubscribe(subscriber_sid)
