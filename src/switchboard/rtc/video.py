"""Video relay without decoding: a publisher's frames go to each subscriber whole, still encoded.

A video frame spans several RTP packets, and aiortc's senders packetize whole frames (VP8, H.264), so
unlike audio the publisher's packets are first put back together. aiortc's receiver already does that
well (NACKs and retransmissions, a jitter buffer, a PLI when it loses a frame); its jitter buffer is
made to release a frame on its last packet rather than on the next frame's first, and its decoder is
taken away: the queue it reads from is replaced by a sink that
hands each reassembled frame to the subscribers' `OutboundVideo` slots, and the decoder thread ends at
once. aiortc's sender of each subscriber re-packetizes the frame with its own SSRC, sequence numbers and
VP8 picture ids.

A decoder that lost a frame cannot decode what follows until a keyframe: a slot that joins a stream, is
resumed, or had to drop a frame sends nothing until the next keyframe, and asks the publisher for one
(a PLI on the publisher's connection). A subscriber's own PLI reaches the publisher the same way (a FIR
would too, but `ccm fir` is not among the feedback aiortc offers, so clients do not send one).
This relies on aiortc internals (the receiver's private jitter buffer, decoder queue and thread and bitrate
estimator, the sender's `_send_keyframe`, `RTCRtpReceiver._send_rtcp_pli`), hence the pinned aiortc
version.
"""

import asyncio
import fractions
import logging
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from switchboard.rtc.relay import OutboundSlot, TrackRelay

log = logging.getLogger("switchboard.rtc")

VIDEO_CLOCK = 90000
RELAYED_CODECS = ("video/VP8", "video/H264")
# About a second of video at 30 fps: a subscriber further behind starts again from a keyframe.
_QUEUE_FRAMES = 30
# A publisher is asked for a keyframe at most this often, however many subscribers ask.
KEYFRAME_INTERVAL = 0.25


def is_keyframe(mime_type: str, frame: bytes) -> bool:
    """Whether a whole encoded frame can be decoded on its own."""
    if not frame:
        return False
    if mime_type == "video/VP8":
        return frame[0] & 0x01 == 0  # RFC 6386 §9.1: the frame header's P bit is 0 for a key frame
    # H.264 as aiortc depacketizes it: Annex B NAL units; an IDR slice (5) or a parameter set (7)
    # starts a picture that needs no earlier one.
    return any(unit and unit[0] & 0x1F in (5, 7) for unit in frame.split(b"\x00\x00\x01"))


class OutboundVideo(OutboundSlot):
    kind = "video"
    time_base = fractions.Fraction(1, VIDEO_CLOCK)
    frame_ticks = VIDEO_CLOCK // 30

    def __init__(self, mime_type: str) -> None:
        super().__init__(_QUEUE_FRAMES)
        self.mime_type = mime_type
        self.paused = False
        """The subscriber asked for no video on this track for now (`update_track_settings` disabled)."""
        self._waiting_keyframe = True

    def attach(self, relay: TrackRelay) -> None:
        super().attach(relay)
        self._resynchronize()

    def pause(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self._drop_queued()
        else:
            self._resynchronize()

    def _resynchronize(self) -> None:
        """What the subscriber decodes next must be a keyframe: wait for one, and ask for it."""
        self._waiting_keyframe = True
        self.request_keyframe()

    def request_keyframe(self) -> None:
        if isinstance(self.relay, VideoRelay):
            self.relay.request_keyframe()

    def push(self, payload: bytes, pts: int, keyframe: bool = True) -> None:
        if self.paused:
            return
        if self._waiting_keyframe:
            if not keyframe:
                self.request_keyframe()  # throttled by the relay: this repeats a request that was lost
                return
            self._waiting_keyframe = False
        if not self._enqueue(payload, pts):
            self._drop_queued()  # the frame just dropped is needed by the ones behind it
            self._resynchronize()


class _FrameOnMarker(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame as soon as its last packet is in.

    aiortc's own releases a frame once a packet of the next frame arrives: a frame interval late (33 ms
    at 30 fps), which bench/rtc.py measured as the relay's whole added latency. The last packet of a
    frame carries the RTP marker bit (VP8: RFC 7741 §4.1; H.264: RFC 6184 §5.1), so a frame whose packets
    are all in up to that one is complete already. Without a marker (a sender that sets none), aiortc's
    rule applies.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[Any] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]  # type: ignore[operator]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                break
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)
        return super()._remove_frame(sequence_number)

    @classmethod
    def replacing(cls, buffer: JitterBuffer) -> "_FrameOnMarker":
        """A buffer that carries on with what `buffer` holds (packets may have come already)."""
        replacement = cls(capacity=buffer.capacity, is_video=True)
        replacement._origin = buffer._origin
        replacement._packets = buffer._packets
        return replacement


class _FrameSink:
    """Takes the place of the receiver's decoder queue: reassembled frames go to the relay instead."""

    def __init__(self, relay: "VideoRelay") -> None:
        self._relay = relay

    def put(self, task: tuple[Any, Any] | None) -> None:
        if task is not None:
            codec, frame = task
            self._relay.relay_frame(codec.mimeType, frame.data, frame.timestamp)

    def get(self) -> None:
        return None  # a decoder thread started on this sink ends at once


class VideoRelay(TrackRelay):
    """A published video track: each whole encoded frame goes to every subscriber."""

    kind = "video"

    def __init__(self, track_sid: str, transceiver: RTCRtpTransceiver) -> None:
        super().__init__(track_sid)
        negotiated = [c.mimeType for c in transceiver._codecs if c.mimeType in RELAYED_CODECS]
        self.mime_type = negotiated[0] if negotiated else RELAYED_CODECS[0]
        """The codec the publisher sends (the first one of its offer that aiortc accepted)."""
        self._receiver = receiver = transceiver.receiver
        self._last_request = -KEYFRAME_INTERVAL
        self._requests: set[asyncio.Task[None]] = set()
        self._foreign_codec_logged = False
        # The decoder thread, if already started, waits on the original queue: end it.
        receiver._RTCRtpReceiver__decoder_queue.put(None)  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__decoder_queue = _FrameSink(self)  # type: ignore[attr-defined]
        # No REMB to the publisher: aiortc's estimator cuts its estimate to 0.85 x the bitrate it receives
        # when it sees the delay grow, then raises it by a few kbit/s a second. A muted camera (the
        # Rust-based SDKs send black frames, a few kbit/s) or a still screen share sends next to nothing:
        # one such cut asked the publisher for 30 kbit/s, libwebrtc's minimum, where it stayed for
        # seconds after the picture came back (Python SDK: 30 -> 34 kbit/s in the 7 s after unmute, the
        # picture a blur). Without it, libwebrtc's loss-based estimate sets the bitrate, up to the SDK's
        # maximum for the encoding (it ramps up as fast: bench/rtc.py, README "Video").
        receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__jitter_buffer = _FrameOnMarker.replacing(  # type: ignore[attr-defined]
            receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        )

    def fits(self, slot: OutboundSlot) -> bool:
        return isinstance(slot, OutboundVideo) and slot.mime_type == self.mime_type

    def open_slot(self, pc: RTCPeerConnection) -> tuple[RTCRtpTransceiver, OutboundSlot]:
        slot = OutboundVideo(self.mime_type)
        transceiver = pc.addTransceiver(slot, direction="sendonly")
        # The frames are sent as they are: the subscriber must take the publisher's codec.
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in capabilities if c.mimeType in (self.mime_type, "video/rtx")]
        )
        # aiortc's sender answers a subscriber's PLI or FIR by asking its encoder for a keyframe;
        # there is no encoder here, so the request goes to the publisher.
        transceiver.sender._send_keyframe = slot.request_keyframe  # type: ignore[method-assign]
        return transceiver, slot

    def relay_frame(self, mime_type: str, frame: bytes, timestamp: int) -> None:
        if mime_type != self.mime_type:
            if not self._foreign_codec_logged:
                self._foreign_codec_logged = True
                log.info("video frames in another codec dropped track=%s codec=%s", self.track_sid, mime_type)
            return
        keyframe = is_keyframe(mime_type, frame)
        for slot in self.subscribers.values():
            slot.push(frame, timestamp, keyframe)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (RTCP PLI), at most every KEYFRAME_INTERVAL seconds."""
        now = time.monotonic()
        sources = self._receiver.getSynchronizationSources()
        if now - self._last_request < KEYFRAME_INTERVAL or not sources:
            return  # nothing received yet: the first frame the publisher sends is a keyframe anyway
        self._last_request = now
        ssrc = max(sources, key=lambda s: s.timestamp).source
        task = asyncio.get_running_loop().create_task(self._receiver._send_rtcp_pli(ssrc))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def close(self) -> None:
        super().close()
        for task in self._requests:
            task.cancel()
