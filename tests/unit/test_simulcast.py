"""Simulcast offers answered with one layer, and keyframes told from whole encoded frames."""

import pytest

from switchboard.rtc.simulcast import RID_EXTENSION, accept_one_layer, chosen_layer
from switchboard.rtc.video import is_keyframe

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:0",
        "a=sendonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:10 {RID_EXTENSION}",
        "a=rtpmap:96 VP8/90000",
        "a=rid:q send",
        "a=rid:h send",
        "a=simulcast:send q;~h",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:1",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)
ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3 4 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:0",
        "a=recvonly",
        "a=rtpmap:96 VP8/90000",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:1",
        "a=recvonly",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)


@pytest.mark.parametrize(
    ("offered", "rid"),
    [
        ("f;h;q", "f"),  # the Rust SDKs: full size first
        ("q;h;f", "f"),
        ("q;~h", "q"),  # livekit-client: a paused layer is not chosen
        ("~q;~h", "h"),  # all paused: the best one, which the client may resume
        ("q,h", "h"),  # alternatives
    ],
)
def test_the_best_active_layer_is_chosen(offered: str, rid: str) -> None:
    assert chosen_layer([offered]) == rid


def test_the_answer_accepts_one_layer_with_the_rid_extension() -> None:
    answer = accept_one_layer(OFFER, ANSWER)
    video, audio = answer.split("m=audio")
    assert video.splitlines()[-3:] == [f"a=extmap:10 {RID_EXTENSION}", "a=rid:q recv", "a=simulcast:recv q"]
    assert "simulcast" not in audio and "rid" not in audio
    assert answer.startswith(ANSWER.split("m=video")[0])


def test_an_offer_without_simulcast_leaves_the_answer_alone() -> None:
    plain = "\r\n".join(line for line in OFFER.split("\r\n") if "simulcast" not in line)
    assert accept_one_layer(plain, ANSWER) == ANSWER


def test_keyframes() -> None:
    assert is_keyframe("video/VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))  # P bit 0
    assert not is_keyframe("video/VP8", bytes([0x31, 0x02, 0x00]))
    assert is_keyframe(
        "video/H264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce\x00\x00\x00\x01\x65\x88"
    )
    assert not is_keyframe("video/H264", b"\x00\x00\x00\x01\x41\x9a")
    assert not is_keyframe("video/VP8", b"")
