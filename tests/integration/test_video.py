"""Video rooms with the official SDKs: camera and screen tracks relayed without decoding, keyframes for
late joiners, simulcast offers, mute and unmute; publishers in the Python SDK, `@livekit/rtc-node` and
the browser's `livekit-client`, and a livekit-agents job reading a participant's video."""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal

from tests.browser import JOIN_TIMEOUT, BrowserScenario, served_page
from tests.conftest import Server, start_server, stop_server
from tests.integration.test_rtc_node import run_rtc_scenario, unique_room
from tests.integration.test_rtc_python import raw_join, read_signal_until
from tests.polling import eventually

WIDTH, HEIGHT = 640, 360
ORANGE = (230, 120, 20)
BLUE = (20, 60, 220)
BLACK = (0, 0, 0)
# Frames a muted Python camera is seen to send (black) before the test unmutes it: a third of a second.
MUTED_FRAMES = 10
FPS = 30
# Frames go through VP8 twice (the publisher's encoder, the subscriber's decoder): colours move a little.
COLOUR_TOLERANCE = 24
BROWSER_WIDTH, BROWSER_HEIGHT = 640, 480
# "A late joiner sees a picture within a second": measured from its subscription to its first frame.
FIRST_FRAME_DEADLINE = 1.5
FRAME_DEADLINE = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(tmp_path_factory.mktemp("server"), {"rtc": {"ice_addresses": ["127.0.0.1"]}})
    yield instance
    stop_server(instance)


@dataclass
class Received:
    """What a subscriber saw of one video track."""

    subscribed_at: float
    frames: int = 0
    first_frame_at: float | None = None
    size: tuple[int, int] = (0, 0)
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: int = 0
    announced: tuple[int, int] = (0, 0)
    """The track's size in the TrackInfo the subscriber was sent (its publication's width, height)."""
    sizes: set[tuple[int, int]] = field(default_factory=set)
    colours: list[tuple[float, float, float]] = field(default_factory=list)
    """The mean colour of every frame, in the order they came."""


class Viewer:
    """A Python rtc participant that reads every video track it is sent."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.tracks: dict[str, Received] = {}
        self.muted: list[str] = []
        self.unmuted: list[str] = []
        self._tasks: set[asyncio.Future[None]] = set()

        @self.room.on("track_subscribed")
        def on_track(track: rtc.Track, publication: rtc.RemoteTrackPublication, *_: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                received = Received(
                    subscribed_at=time.monotonic(),
                    source=publication.source,
                    announced=(publication.width, publication.height),
                )
                self.tracks[publication.sid] = received
                self._spawn(self._watch(track, received))

        self.room.on("track_muted", lambda _p, publication: self.muted.append(publication.sid))
        self.room.on("track_unmuted", lambda _p, publication: self.unmuted.append(publication.sid))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, track: rtc.Track, received: Received) -> None:
        async for event in rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA):
            frame = event.frame
            if received.first_frame_at is None:
                received.first_frame_at = time.monotonic()
            pixels = np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 4)
            received.size = (frame.width, frame.height)
            received.sizes.add(received.size)
            received.colour = tuple(float(c) for c in pixels[..., :3].reshape(-1, 3).mean(axis=0))  # type: ignore[assignment]
            received.colours.append(received.colour)
            received.frames += 1

    def only(self) -> Received:
        [received] = self.tracks.values()
        return received

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()


class Camera:
    """A Python rtc participant publishing a plain colour at FPS frames a second."""

    def __init__(self, room: rtc.Room, colour: tuple[int, int, int], width: int, height: int) -> None:
        self.source = rtc.VideoSource(width, height)
        self.track = rtc.LocalVideoTrack.create_video_track("camera", self.source)
        self._width, self._height = width, height
        self.paint(colour)
        self._room = room
        self._task: asyncio.Task[None] | None = None

    def paint(self, colour: tuple[int, int, int]) -> None:
        """From the next frame on, the camera sends this colour."""
        pixels = np.empty((self._height, self._width, 4), dtype=np.uint8)
        pixels[...] = (*colour, 255)
        self._frame = rtc.VideoFrame(self._width, self._height, rtc.VideoBufferType.RGBA, pixels.tobytes())

    async def publish(self, **options: Any) -> rtc.LocalTrackPublication:
        publish_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, **options)
        publication = await self._room.local_participant.publish_track(self.track, publish_options)
        self._task = asyncio.ensure_future(self._play())
        return publication

    async def _play(self) -> None:
        while True:
            self.source.capture_frame(self._frame, timestamp_us=int(time.monotonic() * 1e6))
            await asyncio.sleep(1 / FPS)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


@pytest.fixture
async def room(server: Server) -> AsyncIterator[Callable[..., Any]]:
    """join(identity) connects a participant to a fresh room; join.camera(...) starts a publisher."""
    made: list[Any] = []
    name = f"video-{uuid.uuid4().hex[:8]}"

    async def join(identity: str) -> Viewer:
        viewer = Viewer(identity)
        made.append(viewer)
        await viewer.room.connect(server.ws_url, server.join_token(name, identity))
        return viewer

    async def camera(
        identity: str, colour: tuple[int, int, int] = ORANGE, width: int = WIDTH, height: int = HEIGHT
    ) -> tuple[Viewer, Camera]:
        viewer = await join(identity)
        publisher = Camera(viewer.room, colour, width, height)
        made.append(publisher)
        return viewer, publisher

    join.camera = camera  # type: ignore[attr-defined]
    join.name = name  # type: ignore[attr-defined]
    yield join
    for item in reversed(made):
        if isinstance(item, Camera):
            item.stop()
        else:
            await item.close()


def close_to(colour: tuple[float, float, float], expected: tuple[int, int, int]) -> bool:
    return all(abs(c - e) <= COLOUR_TOLERANCE for c, e in zip(colour, expected, strict=True))


@pytest.mark.parametrize(
    ("codec", "mime_type"), [(rtc.VideoCodec.VP8, "video/VP8"), (rtc.VideoCodec.H264, "video/H264")]
)
async def test_camera_frames_reach_a_subscriber_with_their_size_and_colour(
    room: Any, lkapi: api.LiveKitAPI, codec: int, mime_type: str
) -> None:
    viewer = await room("viewer")
    _, camera = await room.camera("alice")
    publication = await camera.publish(simulcast=False, video_codec=codec)
    assert publication.sid.startswith("TR_")

    received = await eventually(
        lambda: viewer.tracks.get(publication.sid), "the viewer to subscribe to alice's camera"
    )
    await eventually(lambda: received.frames >= 30, "30 frames of alice's camera", FRAME_DEADLINE)
    assert received.size == (WIDTH, HEIGHT)
    assert close_to(received.colour, ORANGE), f"relayed colour {received.colour} is not {ORANGE}"
    assert received.source == rtc.TrackSource.SOURCE_CAMERA
    # The size the SDK announced in its AddTrackRequest, as the viewer's TrackInfo carries it.
    assert received.announced == (WIDTH, HEIGHT)

    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room.name))
    [track] = next(p for p in listed.participants if p.identity == "alice").tracks
    assert (track.sid, track.type, track.source, track.mime_type, track.width, track.height) == (
        publication.sid,
        api.TrackType.VIDEO,
        api.TrackSource.CAMERA,
        mime_type,
        WIDTH,
        HEIGHT,
    )


async def test_a_late_joiner_gets_a_picture_promptly(room: Any) -> None:
    """The stream has run for a while (no keyframe due soon) when a viewer joins: it asks for one."""
    early = await room("early")
    _, camera = await room.camera("alice")
    publication = await camera.publish(simulcast=False)
    received = await eventually(lambda: early.tracks.get(publication.sid), "the early viewer's track")
    await eventually(lambda: received.frames >= 2 * FPS, "two seconds of video for the early viewer")

    late = await room("late")
    late_received = await eventually(lambda: late.tracks.get(publication.sid), "the late viewer's track")
    await eventually(
        lambda: late_received.first_frame_at, "the late viewer's first frame", FIRST_FRAME_DEADLINE
    )
    assert late_received.first_frame_at is not None
    delay = late_received.first_frame_at - late_received.subscribed_at
    print(f"late joiner: first frame {delay * 1000:.0f} ms after its subscription")
    await eventually(lambda: late_received.frames >= 10, "ten frames for the late viewer")
    assert late_received.size == (WIDTH, HEIGHT) and close_to(late_received.colour, ORANGE)


async def test_simulcast_offers_are_relayed_as_their_first_full_size_layer(room: Any) -> None:
    """The Rust SDK offers three layers (rids f, h, q, full size first); the answer accepts one of them
    (`a=simulcast:recv f`), so it sends one stream: that full-size layer, not a scaled-down one."""
    viewer = await room("viewer")
    _, camera = await room.camera("alice")
    publication = await camera.publish(simulcast=True)
    received = await eventually(lambda: viewer.tracks.get(publication.sid), "the viewer's track")
    await eventually(lambda: received.frames >= 30, "30 frames of the simulcast camera", FRAME_DEADLINE)
    assert received.sizes == {(WIDTH, HEIGHT)}
    assert close_to(received.colour, ORANGE)


async def target_bitrate(camera: Camera) -> float:
    """The publisher's bitrate estimate for its camera (libwebrtc's outbound-rtp `targetBitrate`)."""
    stats = await camera.track.get_stats()
    sending = [s.outbound_rtp.outbound for s in stats if s.WhichOneof("stats") == "outbound_rtp"]
    return max((o.target_bitrate for o in sending), default=0.0)


async def test_mute_sends_black_frames_and_unmute_brings_the_picture_back(room: Any) -> None:
    """The Python SDK keeps sending a muted camera, as black frames (libwebrtc's disabled track), which
    the viewer receives; after unmute the camera paints a new colour, and the viewer sees that colour."""
    viewer = await room("viewer")
    alice, camera = await room.camera("alice")
    publication = await camera.publish(simulcast=False)
    received = await eventually(lambda: viewer.tracks.get(publication.sid), "the viewer's track")
    await eventually(lambda: received.frames >= 10, "the first frames")
    assert close_to(received.colour, ORANGE), received.colour
    own = {"track_muted": 0, "track_unmuted": 0}  # what alice's own SDK reports of her track
    for event in own:
        alice.room.on(event, lambda *_, event=event: own.__setitem__(event, own[event] + 1))

    camera.track.mute()
    await eventually(lambda: publication.sid in viewer.muted, "the viewer to see the camera muted")
    # Frames already on their way may still be orange: from the first black one on, all are black.
    first_black = await eventually(
        lambda: next((n for n, c in enumerate(received.colours) if close_to(c, BLACK)), None),
        "a black frame while muted",
        FRAME_DEADLINE,
        accept=lambda n: n is not None,
    )
    await eventually(
        lambda: received.frames >= first_black + MUTED_FRAMES, "frames while muted", FRAME_DEADLINE
    )
    muted_colours = received.colours[first_black:]
    assert all(close_to(c, BLACK) for c in muted_colours), muted_colours

    camera.paint(BLUE)
    unmuted_from = received.frames
    camera.track.unmute()
    await eventually(lambda: publication.sid in viewer.unmuted, "the viewer to see the camera unmuted")
    await eventually(
        lambda: any(close_to(c, BLUE) for c in received.colours[unmuted_from:]),
        "the new colour after unmute",
        FRAME_DEADLINE,
    )
    # Her camera sent next to nothing while muted: its bitrate is still where it was (the server's REMB,
    # no longer sent, asked for libwebrtc's minimum of 30 kbit/s then, and kept it there for seconds).
    await eventually(
        lambda: target_bitrate(camera),
        "alice's bitrate after unmute",
        FRAME_DEADLINE,
        accept=lambda b: b > 200_000,
    )
    # Her own mute and unmute, once each: the server does not tell her of what she did herself (told, the
    # SDK muted again and asked again, thousands of times a second, the picture stalling meanwhile).
    assert own == {"track_muted": 1, "track_unmuted": 1}


async def test_two_cameras_and_three_viewers(room: Any) -> None:
    """Each viewer gets each camera's own picture: two tracks, two colours, no mix-up; the last viewer
    joins once both publish, and receives both in its first offer."""
    viewers = [await room(f"viewer-{n}") for n in range(2)]
    _, orange_camera = await room.camera("orange")
    _, blue_camera = await room.camera("blue", colour=BLUE, width=320, height=240)
    orange = await orange_camera.publish(simulcast=False)
    blue_publication = await blue_camera.publish(simulcast=False)
    viewers.append(await room("late-viewer"))
    for viewer in viewers:
        for sid in (orange.sid, blue_publication.sid):
            track = await eventually(lambda v=viewer, s=sid: v.tracks.get(s), f"{viewer.identity} {sid}")
            await eventually(lambda t=track: t.frames >= 10, f"{viewer.identity} frames of {sid}")
        assert viewer.tracks[orange.sid].size == (WIDTH, HEIGHT)
        assert close_to(viewer.tracks[orange.sid].colour, ORANGE)
        assert viewer.tracks[blue_publication.sid].size == (320, 240)
        assert close_to(viewer.tracks[blue_publication.sid].colour, BLUE)


async def test_browser_camera_and_screen_share_reach_python(server: Server) -> None:
    """livekit-client publishes Chromium's fake camera and fake screen (simulcast on, as by default); a
    Python viewer receives both, at the camera's size; mute and unmute reach it too."""
    name = f"browser-video-{uuid.uuid4().hex[:8]}"
    viewer = Viewer("viewer")
    await viewer.room.connect(server.ws_url, server.join_token(name, "viewer"))
    async with served_page() as page:
        browser = BrowserScenario(
            server,
            page,
            "camera",
            server.join_token(name, "browser"),
            CAMERA_WIDTH=str(BROWSER_WIDTH),
            CAMERA_HEIGHT=str(BROWSER_HEIGHT),
        )
        try:
            await browser.start()
            wanted = (rtc.TrackSource.SOURCE_CAMERA, rtc.TrackSource.SOURCE_SCREENSHARE)
            await eventually(
                lambda: {r.source: r.frames for r in viewer.tracks.values()},
                "ten frames of the browser's camera and screen (frames by source)",
                JOIN_TIMEOUT,
                accept=lambda frames: all(frames.get(source, 0) >= 10 for source in wanted),
            )
            by_source = {r.source: r for r in viewer.tracks.values()}
            camera = by_source[rtc.TrackSource.SOURCE_CAMERA]
            screen = by_source[rtc.TrackSource.SOURCE_SCREENSHARE]
            print(f"browser camera received at {sorted(camera.sizes)}, screen at {sorted(screen.sizes)}")
            # livekit-client offers the layers `q;h`: the relay takes `h`, the full-size one, which
            # Chromium's encoder scales down under a low bandwidth estimate, at the camera's aspect ratio.
            assert all(
                w * BROWSER_HEIGHT == h * BROWSER_WIDTH and w <= BROWSER_WIDTH for w, h in camera.sizes
            ), camera.sizes
            assert screen.size[0] > 0 and screen.size[1] > 0

            camera_sid = next(sid for sid, r in viewer.tracks.items() if r is camera)
            browser.tell("mute")
            await eventually(lambda: camera_sid in viewer.muted, "the viewer to see the camera muted")
            browser.tell("unmute")
            await eventually(lambda: camera_sid in viewer.unmuted, "the viewer to see the camera unmuted")
            frames = camera.frames
            await eventually(
                lambda: camera.frames >= frames + 10, "camera frames after unmute", FRAME_DEADLINE
            )
            browser.tell("leave")
            result = await browser.result()
        finally:
            await browser.kill()
            await viewer.close()
    print(f"browser sent: {result['sent']}")
    assert result["muted"] == [True, False]
    assert "screenError" not in result["published"], result["published"]


async def test_rtc_node_camera_reaches_node_viewers_and_a_late_joiner(server: Server) -> None:
    """@livekit/rtc-node publishes a 320x240 camera of one colour (simulcast offered, dynacast on: the
    server never asks it for fewer layers, so it keeps sending); another rtc-node participant receives
    it, and so does one that joins while it runs."""
    result = await run_rtc_scenario(server, "video", unique_room("video"), "ABC")
    print(f"rtc-node video: {result['received']}")
    for label in ("B", "C"):
        received = result["received"][label]
        assert received["sizes"] == ["320x240"], received
        assert close_to(tuple(received["colour"]), ORANGE), received
    assert result["received"]["C"]["firstFrameMs"] < FIRST_FRAME_DEADLINE * 1000


async def test_an_agent_job_reads_a_participants_video(server: Server, workers: Any) -> None:
    """A livekit-agents worker, dispatched by the participant's token, counts the frames of its camera."""
    worker = workers("watcher", "watch")
    name = f"agent-video-{uuid.uuid4().hex[:8]}"
    viewer = Viewer("alice")
    await viewer.room.connect(
        server.ws_url, server.join_token(name, "alice", agents=[{"agentName": "watcher"}])
    )
    camera = Camera(viewer.room, ORANGE, WIDTH, HEIGHT)
    try:
        publication = await camera.publish(simulcast=False)
        [watched] = await eventually(
            lambda: list(worker.records.glob("*.watched")), "the agent to watch 30 frames", FRAME_DEADLINE * 3
        )
        record = json.loads(watched.read_text())
    finally:
        camera.stop()
        await viewer.close()
    assert (record["participant"], record["track_sid"], record["frames"]) == ("alice", publication.sid, 30)
    assert record["size"] == [WIDTH, HEIGHT]
    assert close_to(tuple(record["colour"]), ORANGE), record


async def test_browser_views_a_python_camera_and_hides_it_with_adaptive_stream(server: Server) -> None:
    """livekit-client (adaptive stream on) joins once a Python camera runs and decodes it while its
    <video> element shows it (its first frame within FIRST_FRAME_DEADLINE of TrackSubscribed); once the
    element is gone the SDK asks for no video (`update_track_settings` disabled) and frames stop; shown
    again, frames come back."""
    name = f"browser-view-{uuid.uuid4().hex[:8]}"
    publisher = Viewer("py")
    await publisher.room.connect(server.ws_url, server.join_token(name, "py"))
    camera = Camera(publisher.room, ORANGE, WIDTH, HEIGHT)
    try:
        await camera.publish(simulcast=False)
        async with served_page() as page:
            browser = BrowserScenario(
                server, page, "view", server.join_token(name, "browser"), PEER_IDENTITY="py"
            )
            try:
                await browser.start()
                result = await browser.result()
            finally:
                await browser.kill()
    finally:
        camera.stop()
        await publisher.close()
    viewed = result["viewed"]
    print(f"browser view: {viewed}")
    assert viewed["subscribed"] and viewed["shown"] is not None, viewed
    assert (viewed["shown"]["width"], viewed["shown"]["height"]) == (WIDTH, HEIGHT)
    # The browser joined after the camera published: a late joiner, asked a keyframe for.
    assert viewed["firstFrameMs"] is not None, viewed
    assert viewed["firstFrameMs"] < FIRST_FRAME_DEADLINE * 1000, viewed
    assert viewed["hidden"] is not None, "frames kept coming to a hidden video"
    assert viewed["shownAgain"] is not None, "no frames once the video was shown again"


async def test_video_tracks_are_announced_and_other_track_types_refused(server: Server) -> None:
    """AddTrack: a video track is published (type VIDEO, a TR_ sid); a type this server does not relay
    gets LiveKit's refusal, UNSUPPORTED_TYPE, naming the request."""
    session, ws = await raw_join(server, f"types-{uuid.uuid4().hex[:8]}", "announcer")
    try:
        for cid, kind in (("camera", models.VIDEO), ("data", models.DATA)):
            request = signal.AddTrackRequest(cid=cid, name=cid, type=kind, source=models.CAMERA)
            await ws.send_bytes(signal.SignalRequest(add_track=request).SerializeToString())
        seen = await read_signal_until(ws, lambda r: r.WhichOneof("message") == "request_response")
        [published] = [r.track_published for r in seen if r.WhichOneof("message") == "track_published"]
        assert (published.cid, published.track.type) == ("camera", models.VIDEO)
        assert published.track.sid.startswith("TR_")
        refusal = seen[-1].request_response
        assert refusal.reason == signal.RequestResponse.UNSUPPORTED_TYPE and refusal.add_track.cid == "data"
    finally:
        await session.close()
