"""A published video's frames are put back together from its RTP packets and released as soon as the
last one (the RTP marker bit) is in, not a frame later when the next frame begins; with gaps, retransmitted
packets and senders that set no marker."""

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from switchboard.rtc.video import _FrameOnMarker


def packet(sequence_number: int, timestamp: int, data: bytes, marker: bool) -> RtpPacket:
    rtp = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence_number, timestamp=timestamp)
    rtp._data = data  # type: ignore[attr-defined]  # what aiortc's depayloader leaves for the buffer
    return rtp


def released(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, bytes] | None]:
    """What each packet added releases: (timestamp, frame) or None."""
    frames = [buffer.add(p)[1] for p in packets]
    return [(f.timestamp, f.data) if f is not None else None for f in frames]


def test_a_frame_is_released_with_its_last_packet() -> None:
    buffer = _FrameOnMarker.replacing(JitterBuffer(capacity=512, is_video=True))
    frames = [packet(1, 3000, b"a1", False), packet(2, 3000, b"a2", True), packet(3, 6000, b"b", True)]
    assert released(buffer, frames) == [None, (3000, b"a1a2"), (6000, b"b")]


def test_aiortcs_own_buffer_waits_for_the_next_frame() -> None:
    """The behaviour replaced: the same packets, each frame a packet later."""
    buffer = JitterBuffer(capacity=512, is_video=True)
    frames = [packet(1, 3000, b"a1", False), packet(2, 3000, b"a2", True), packet(3, 6000, b"b", True)]
    assert released(buffer, frames) == [None, None, (3000, b"a1a2")]


def test_a_frame_with_a_missing_packet_waits_for_its_retransmission() -> None:
    buffer = _FrameOnMarker.replacing(JitterBuffer(capacity=512, is_video=True))
    frames = [packet(1, 3000, b"a1", False), packet(3, 3000, b"a3", True), packet(2, 3000, b"a2", False)]
    assert released(buffer, frames) == [None, None, (3000, b"a1a2a3")]


def test_without_a_marker_a_frame_ends_when_the_next_one_begins() -> None:
    buffer = _FrameOnMarker.replacing(JitterBuffer(capacity=512, is_video=True))
    frames = [packet(1, 3000, b"a1", False), packet(2, 3000, b"a2", False), packet(3, 6000, b"b", False)]
    assert released(buffer, frames) == [None, None, (3000, b"a1a2")]


def test_the_replacement_carries_on_with_the_packets_already_in() -> None:
    original = JitterBuffer(capacity=512, is_video=True)
    assert released(original, [packet(7, 3000, b"a1", False)]) == [None]
    buffer = _FrameOnMarker.replacing(original)
    assert released(buffer, [packet(8, 3000, b"a2", True)]) == [(3000, b"a1a2")]
