"""Video across real network paths, with the Python SDK: a camera and a microphone seen and heard through
a TURN server (Debian's coturn, started here; over UDP and over TCP) by participants that may only relay,
a viewer whose path loses everything for a while and recovers with a keyframe it asks for, and cameras
seen both ways across a resume."""

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc

from tests.conftest import Server
from tests.integration.test_networks import (
    TURN_PASSWORD,
    TURN_USER,
    Turn,
    join,
    relay_only,
    running_coturn,
    switchboard,
)
from tests.integration.test_video import (
    FPS,
    FRAME_DEADLINE,
    HEIGHT,
    ORANGE,
    WIDTH,
    Camera,
    Viewer,
    close_to,
)
from tests.isolated_participant import LOUD_RMS, selected_pairs
from tests.polling import eventually
from tests.signal_proxy import SignalProxy

# aiortc's sender keeps its last 128 RTP packets for retransmissions (`aiortc.rtp.RTP_HISTORY_SIZE`): a
# viewer that lost more than that cannot be repaired by NACKs, only by a keyframe.
UNREPAIRABLE_LOSS = 160


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Turn]:
    with running_coturn(tmp_path_factory.mktemp("coturn"), "127.0.0.1") as turn:
        yield turn


class LossyUdpProxy:
    """A UDP proxy in front of one server (here the TURN server), with one upstream socket per client as
    a NAT would have; while `outage` is set, every datagram towards the clients is lost."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.outage = False
        self.lost = 0
        self.port = 0
        self._listener: asyncio.DatagramTransport | None = None
        self._clients: dict[tuple[str, int], socket.socket] = {}

    async def start(self) -> None:
        self._listener, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Deliver(self._from_client), local_addr=("127.0.0.1", 0)
        )
        self.port = self._listener.get_extra_info("sockname")[1]

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        upstream = self._clients.get(client)
        if upstream is None:
            upstream = self._clients[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.setblocking(False)
            upstream.connect(self.upstream)
            asyncio.get_running_loop().add_reader(upstream.fileno(), self._to_client, upstream, client)
        with contextlib.suppress(OSError):
            upstream.send(data)

    def _to_client(self, upstream: socket.socket, client: tuple[str, int]) -> None:
        try:
            data = upstream.recv(65536)
        except OSError:
            return
        if self.outage:
            self.lost += 1
        elif self._listener is not None:
            self._listener.sendto(data, client)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self._clients.values():
            loop.remove_reader(upstream.fileno())
            upstream.close()
        if self._listener is not None:
            self._listener.close()


class _Deliver(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._deliver = deliver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._deliver(data, addr)


async def video_rtp(room: rtc.Room, report: str) -> Any:
    """The room's one video stream stats: `outbound_rtp` (publisher connection) or `inbound_rtp`."""
    stats = await room.get_rtc_stats()
    side = stats.publisher_stats if report == "outbound_rtp" else stats.subscriber_stats
    streams = [
        getattr(s, report)
        for s in side
        if s.WhichOneof("stats") == report and getattr(s, report).stream.kind == "video"
    ]
    return streams[0] if streams else None


@contextlib.asynccontextmanager
async def relayed_room(tmp_path: Path, turn_port: int) -> AsyncIterator[tuple[Server, str]]:
    """A server that hands out coturn's user for a TURN server on 127.0.0.1:`turn_port` (UDP: coturn's
    own port, or a proxy's in front of it), and a fresh room name."""
    turn = {"host": "127.0.0.1", "port": turn_port, "protocol": "udp"}
    credentials = {"username": TURN_USER, "credential": TURN_PASSWORD}
    with switchboard(tmp_path, {"turn_servers": [turn | credentials]}) as server:
        yield server, f"video-relay-{uuid.uuid4().hex[:8]}"


async def watch(server: Server, room: str, identity: str, options: rtc.RoomOptions) -> Viewer:
    viewer = Viewer(identity)
    await viewer.room.connect(server.ws_url, server.join_token(room, identity), options)
    return viewer


class Listener(Viewer):
    """A Viewer that also measures the level (RMS of int16 samples) of every 10 ms of audio it is sent."""

    def __init__(self, identity: str) -> None:
        super().__init__(identity)
        self.levels: list[float] = []

        @self.room.on("track_subscribed")
        def on_audio(track: rtc.Track, *_: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self._spawn(self._listen(track))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            self.levels.append(float(np.sqrt(np.mean(samples**2))))


async def test_a_camera_and_a_microphone_reach_a_viewer_when_both_may_only_relay_over_udp_and_tcp(
    tmp_path: Path, coturn: Turn
) -> None:
    """Publisher and viewer both forced to relay (as behind a firewall that lets nothing else out): the
    publisher's camera and tone reach the viewer through coturn, the frames at their size and colour. The
    publisher relays over UDP, through the TURN server of the JoinResponse; the viewer over TCP, through
    the same coturn given in its own RtcConfiguration (which the SDK then uses instead), as a client whose
    network lets only TCP out would."""
    async with relayed_room(tmp_path, coturn.port) as (server, room):
        over_tcp = rtc.IceServer(
            urls=[f"turn:127.0.0.1:{coturn.port}?transport=tcp"], username=TURN_USER, password=TURN_PASSWORD
        )
        viewer_options = relay_only()
        assert viewer_options.rtc_config is not None
        viewer_options.rtc_config.ice_servers.append(over_tcp)
        viewer = Listener("viewer")
        await viewer.room.connect(server.ws_url, server.join_token(room, "viewer"), viewer_options)
        alice = await join(server, room, "alice", relay_only())
        camera = Camera(alice.room, ORANGE, WIDTH, HEIGHT)
        try:
            publication = await camera.publish(simulcast=False)
            await alice.publish_tone()
            received = await eventually(lambda: viewer.tracks.get(publication.sid), "the viewer's track")
            await eventually(lambda: received.frames >= FPS, "a second of video through TURN", FRAME_DEADLINE)
            loud = await eventually(
                lambda: [level for level in viewer.levels if level > LOUD_RMS],
                "half a second of alice's tone through TURN",
                FRAME_DEADLINE,
                accept=lambda loud: len(loud) >= 50,
            )
            pairs = {"alice": await selected_pairs(alice.room), "viewer": await selected_pairs(viewer.room)}
        finally:
            camera.stop()
            await viewer.close()
            await alice.close()
    print(f"\nthrough TURN: {received.frames} frames, {len(loud)} loud audio frames; pairs {pairs}")
    assert received.size == (WIDTH, HEIGHT) and close_to(received.colour, ORANGE)
    relayed = {
        who: [(p["local"]["type"], p["local"]["relayProtocol"]) for p in ps] for who, ps in pairs.items()
    }
    # The viewer publishes nothing, so the SDK never connects its publisher connection.
    assert relayed == {
        "alice": [("RELAY", "TRANSPORT_UDP"), ("RELAY", "TRANSPORT_UDP")],
        "viewer": [("RELAY", "TRANSPORT_TCP")],
    }, pairs


async def test_a_viewer_whose_path_loses_everything_for_a_while_recovers_with_a_keyframe(
    tmp_path: Path, coturn: Turn
) -> None:
    """The viewer reaches the room only through TURN, and its TURN server through a UDP proxy that then
    loses every datagram towards it while the camera sends more packets than the server's sender can
    retransmit. Once the path is back, the viewer's libwebrtc asks for a keyframe (PLI), the server passes
    the request on to the publisher, and the frames resume."""
    proxy = LossyUdpProxy(("127.0.0.1", coturn.port))
    await proxy.start()
    try:
        async with relayed_room(tmp_path, proxy.port) as (server, room):
            viewer = await watch(server, room, "viewer", relay_only())
            alice = await join(server, room, "alice")  # its own path is direct
            camera = Camera(alice.room, ORANGE, WIDTH, HEIGHT)
            try:
                publication = await camera.publish(simulcast=False)
                received = await eventually(lambda: viewer.tracks.get(publication.sid), "the viewer's track")
                await eventually(lambda: received.frames >= FPS, "video before the outage", FRAME_DEADLINE)
                sent_before = await video_rtp(alice.room, "outbound_rtp")
                got_before = await video_rtp(viewer.room, "inbound_rtp")

                proxy.outage = True
                frames_at_outage = received.frames
                await eventually(
                    lambda: video_rtp(alice.room, "outbound_rtp"),
                    f"the camera to send {UNREPAIRABLE_LOSS} packets into the outage",
                    FRAME_DEADLINE,
                    accept=lambda s: s.sent.packets_sent >= sent_before.sent.packets_sent + UNREPAIRABLE_LOSS,
                )
                proxy.outage = False
                frames_in_outage = received.frames - frames_at_outage

                frames_at_recovery = received.frames
                await eventually(
                    lambda: received.frames >= frames_at_recovery + FPS,
                    "video after the outage",
                    FRAME_DEADLINE,
                )
                sent_after = await video_rtp(alice.room, "outbound_rtp")
                got_after = await video_rtp(viewer.room, "inbound_rtp")
            finally:
                camera.stop()
                await viewer.close()
                await alice.close()
    finally:
        proxy.close()
    plis_sent = got_after.inbound.pli_count - got_before.inbound.pli_count
    plis_received = sent_after.outbound.pli_count - sent_before.outbound.pli_count
    print(
        f"outage: {proxy.lost} datagrams lost, {frames_in_outage} frames meanwhile; then the viewer sent "
        f"{plis_sent} PLI and {got_after.inbound.nack_count - got_before.inbound.nack_count} NACKs, "
        f"the publisher received {plis_received} PLI"
    )
    assert proxy.lost >= UNREPAIRABLE_LOSS
    assert frames_in_outage <= 3, "frames kept coming: the outage lost nothing"
    assert plis_sent > 0, "the viewer asked for no keyframe"
    assert plis_received > 0, "no keyframe request reached the publisher"
    assert got_after.inbound.key_frames_decoded > got_before.inbound.key_frames_decoded
    assert received.size == (WIDTH, HEIGHT) and close_to(received.colour, ORANGE)


async def test_cameras_are_seen_both_ways_after_a_resume(tmp_path: Path) -> None:
    """alice signals through a TCP proxy that is cut as a network blip would cut it: her SDK resumes (with
    the ICE restart it asks for) and keeps its subscription; her camera still reaches bob, and bob's
    reaches her again, both at their size and colour."""
    blue = (20, 60, 220)
    room = f"video-resume-{uuid.uuid4().hex[:8]}"
    with switchboard(tmp_path, {}) as server:
        async with SignalProxy.to(server) as proxy:
            alice = Viewer("alice")
            resumed: list[float] = []
            alice.room.on("reconnected", lambda: resumed.append(time.monotonic()))
            await alice.room.connect(proxy.url, server.join_token(room, "alice"))
            bob = await watch(server, room, "bob", rtc.RoomOptions())
            cameras = [Camera(alice.room, ORANGE, WIDTH, HEIGHT), Camera(bob.room, blue, 320, 240)]
            try:
                # The resume's ICE restart lowers libwebrtc's bandwidth estimate, and by default its encoder
                # then scales the picture down: keep the size, so that it can be checked.
                keep_size = rtc.DegradationPreference.MAINTAIN_RESOLUTION
                alice_camera, bob_camera = [
                    await camera.publish(simulcast=False, degradation_preference=keep_size)
                    for camera in cameras
                ]
                at_bob = await eventually(lambda: bob.tracks.get(alice_camera.sid), "alice's camera at bob")
                at_alice = await eventually(lambda: alice.tracks.get(bob_camera.sid), "bob's camera at alice")
                await eventually(lambda: min(at_bob.frames, at_alice.frames) >= FPS, "video both ways")
                sid = alice.room.local_participant.sid

                cut_at = time.monotonic()
                proxy.cut()
                await eventually(lambda: resumed, "alice's SDK to resume")
                frames = (at_bob.frames, at_alice.frames)
                await eventually(
                    lambda: at_bob.frames >= frames[0] + FPS and at_alice.frames >= frames[1] + FPS,
                    "a second of video both ways after the resume",
                    FRAME_DEADLINE,
                )
                print(f"\nvideo resume: resumed {resumed[0] - cut_at:.2f} s after the cut")
                assert alice.room.local_participant.sid == sid, "a resume keeps the participant sid"
                assert alice.tracks[bob_camera.sid] is at_alice, "a resume keeps the subscription"
                # Checked before anyone leaves: once alice has left, bob's SDK may still hand over a last,
                # black frame of her ended track.
                assert at_bob.size == (WIDTH, HEIGHT) and close_to(at_bob.colour, ORANGE)
                assert at_alice.size == (320, 240) and close_to(at_alice.colour, blue)
            finally:
                for camera in cameras:
                    camera.stop()
                await alice.close()
                await bob.close()
