"""A subscriber's video slot: it starts, resumes and recovers from a keyframe, and asks the publisher for one.

The publisher's side is a fake aiortc receiver (the relay only uses its decoder queue, its synchronization
sources and its PLI); frames are pushed as the frame sink would."""

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from switchboard.rtc import video
from switchboard.rtc.video import OutboundVideo, VideoRelay

KEY, DELTA = b"\x10key", b"\x31delta"  # VP8: the first byte's lowest bit is 0 for a keyframe


@dataclass
class FakeReceiver:
    plis: list[int] = field(default_factory=list)
    sources: list[Any] = field(default_factory=lambda: [SimpleNamespace(source=1234, timestamp=1.0)])

    def __post_init__(self) -> None:
        self._RTCRtpReceiver__decoder_queue = SimpleNamespace(put=lambda _: None)
        self._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=512, is_video=True)

    def getSynchronizationSources(self) -> list[Any]:
        return self.sources

    async def _send_rtcp_pli(self, ssrc: int) -> None:
        self.plis.append(ssrc)


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch) -> VideoRelay:
    monkeypatch.setattr(video, "KEYFRAME_INTERVAL", 0.0)  # every request is sent: the test counts them
    transceiver = SimpleNamespace(_codecs=[SimpleNamespace(mimeType="video/VP8")], receiver=FakeReceiver())
    return VideoRelay("TR_camera", transceiver)  # type: ignore[arg-type]


def queued(slot: OutboundVideo) -> list[bytes]:
    frames = []
    while not slot._queue.empty():
        frames.append(bytes(slot._queue.get_nowait()))
    return frames


async def plis(relay: VideoRelay) -> list[int]:
    await asyncio.sleep(0)  # the PLI is sent by a task
    return relay._receiver.plis  # type: ignore[attr-defined, no-any-return]


async def test_a_new_subscriber_waits_for_a_keyframe_and_asks_for_one(relay: VideoRelay) -> None:
    slot = OutboundVideo("video/VP8")
    relay.subscribe("PA_viewer", slot)
    assert await plis(relay) == [1234]
    relay.relay_frame("video/VP8", DELTA, 3000)
    assert queued(slot) == [] and len(await plis(relay)) == 2  # still no keyframe: asked again
    relay.relay_frame("video/VP8", KEY, 6000)
    relay.relay_frame("video/VP8", DELTA, 9000)
    assert queued(slot) == [KEY, DELTA]


async def test_a_paused_subscriber_gets_nothing_and_resumes_from_a_keyframe(relay: VideoRelay) -> None:
    slot = OutboundVideo("video/VP8")
    relay.subscribe("PA_viewer", slot)
    relay.relay_frame("video/VP8", KEY, 0)
    slot.pause(True)
    relay.relay_frame("video/VP8", DELTA, 3000)
    assert queued(slot) == []
    slot.pause(False)
    relay.relay_frame("video/VP8", DELTA, 6000)
    relay.relay_frame("video/VP8", KEY, 9000)
    assert queued(slot) == [KEY]
    assert len(await plis(relay)) == 3  # on subscribing, on resuming, and for the delta frame between


async def test_a_subscriber_that_falls_behind_starts_again_from_a_keyframe(relay: VideoRelay) -> None:
    slot = OutboundVideo("video/VP8")
    relay.subscribe("PA_viewer", slot)
    relay.relay_frame("video/VP8", KEY, 0)
    for n in range(1, video._QUEUE_FRAMES + 1):  # one more than the slot holds: nobody reads it
        relay.relay_frame("video/VP8", DELTA, n * 3000)
    assert queued(slot) == []
    relay.relay_frame("video/VP8", KEY, 999_000)
    assert queued(slot) == [KEY]


async def test_frames_in_another_codec_and_other_subscribers_slots(relay: VideoRelay) -> None:
    slot = OutboundVideo("video/VP8")
    relay.subscribe("PA_viewer", slot)
    relay.relay_frame("video/H264", b"\x00\x00\x01\x65idr", 0)
    assert queued(slot) == []
    assert relay.fits(OutboundVideo("video/VP8")) and not relay.fits(OutboundVideo("video/H264"))
    relay.unsubscribe("PA_viewer")
    relay.relay_frame("video/VP8", KEY, 3000)
    assert queued(slot) == [] and slot.relay is None


@pytest.mark.parametrize("fmt", [RTCP_PSFB_PLI, RTCP_PSFB_FIR], ids=["PLI", "FIR"])
async def test_a_subscribers_keyframe_request_reaches_the_publisher(relay: VideoRelay, fmt: int) -> None:
    """The subscriber's own PLI or FIR, as aiortc's sender of its copy receives it, is asked of the publisher
    (there is no encoder on the server to make the keyframe)."""
    pc = RTCPeerConnection()
    try:
        transceiver, slot = relay.open_slot(pc)
        relay.subscribe("PA_viewer", slot)
        asked = len(await plis(relay))  # the subscription's own request
        sender = transceiver.sender
        request = RtcpPsfbPacket(fmt=fmt, ssrc=4321, media_ssrc=sender._ssrc)
        await sender._handle_rtcp_packet(request)
        assert len(await plis(relay)) == asked + 1
    finally:
        await pc.close()
