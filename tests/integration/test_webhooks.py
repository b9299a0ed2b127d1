"""Webhooks from a real server to a receiver started by the test on 127.0.0.1, verified by the official
`WebhookReceiver` of the Python (livekit-api) and Node (livekit-server-sdk) server SDKs: every event of a
scenario with a participant, an agent that runs and one that fails for lack of a worker, in order; a
receiver that is down, then up, gets them late and in order; an unreachable one does not slow the API.
The server's delivery process: started again when it dies, and gone with the server; what the server
could not hand it is counted in the next event it sends."""

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import agent, models
from livekit.protocol.webhook import WebhookEvent

from switchboard.webhook_delivery import WebhookSettings
from switchboard.webhooks import DeliveryProcess
from tests.agent_workers import eventually
from tests.conftest import Server, free_port, start_server, stop_server, unique
from tests.node_clients import NODE_DIR, run_node
from tests.protocol_worker import worker_running_a_new_rooms_job

PENDING_TIMEOUT = 1.0
FAST_RETRIES = {"retry_delay": 0.05, "retry_delay_max": 0.3, "max_attempts": 1000, "timeout": 2}
DEADLINE = 15.0


class Receiver:
    """A webhook endpoint: records every request, answers 503 while `failing`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, str]] = []
        self.refused = 0
        self.failing = False
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        if self.failing:
            self.refused += 1
            return web.Response(status=503)
        self.requests.append(
            {
                "body": await request.text(),
                "authorization": request.headers.get("Authorization", ""),
                "content_type": request.headers.get("Content-Type", ""),
            }
        )
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self, server: Server) -> list[Any]:
        """Every request, verified and parsed by the official Python WebhookReceiver."""
        receiver = api.WebhookReceiver(api.TokenVerifier(server.api_key, server.api_secret))
        parsed = []
        for request in self.requests:
            assert request["content_type"] == "application/webhook+json"
            parsed.append(receiver.receive(request["body"], request["authorization"]))
        return parsed

    def of_room(self, server: Server, room: str) -> list[Any]:
        return [event for event in self.events(server) if event.room.name == room]


def webhook_server(directory: Path, url: str, **delivery: Any) -> Server:
    config = {
        "webhook": {"api_key": "testkey", "urls": [url], **FAST_RETRIES, **delivery},
        "agents": {"pending_timeout": PENDING_TIMEOUT},
        "logging": {"level": "debug"},
    }
    return start_server(directory, config)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    instance = Receiver()
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
def hooked_server(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    instance = webhook_server(tmp_path / "server", receiver.url)
    yield instance
    stop_server(instance)


async def wait_for_events(receiver: Receiver, server: Server, room: str, count: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        events = receiver.of_room(server, room)
        return events if len(events) >= count else None

    try:
        found: list[Any] = await eventually(enough, f"{count} webhook events of room {room}", DEADLINE)
    finally:
        seen = [e.event for e in receiver.of_room(server, room)]
        print(f"events of {room}: {seen}")
    return found


async def node_events(receiver: Receiver, server: Server, tmp_path: Path) -> list[dict[str, Any]]:
    """The same requests, verified and parsed by the official Node WebhookReceiver."""
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(receiver.requests))
    env = dict(os.environ) | {
        "WEBHOOK_REQUESTS": str(requests),
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
    }
    run = await run_node(NODE_DIR / "webhook_receiver.mjs", "verify", env, server.log)
    assert run.returncode == 0 and len(run.results) == 1, f"{run.stderr}\n{run.other_output}"
    [result] = run.results
    assert "unexpectedError" not in result, result
    events: list[dict[str, Any]] = result["events"]
    return events


async def test_a_rooms_life_is_told_in_order_to_both_sdks_receivers(
    hooked_server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    server = hooked_server
    room = unique("hooked")
    async with (
        aiohttp.ClientSession() as session,
        api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk,
    ):
        worker, job_id = await worker_running_a_new_rooms_job(session, server, lk, room, "runner")
        await wait_for_events(receiver, server, room, 2)

        alice = rtc.Room()
        await alice.connect(server.ws_url, server.join_token(room, "alice"))
        await wait_for_events(receiver, server, room, 3)
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await alice.local_participant.publish_track(track, options)
        await wait_for_events(receiver, server, room, 4)
        await alice.local_participant.unpublish_track(publication.sid)
        await wait_for_events(receiver, server, room, 5)

        # Nobody serves this agent: its job fails after the pending timeout, saying so.
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="nobody-serves-this", room=room)
        )
        await wait_for_events(receiver, server, room, 6)
        await alice.disconnect()
        await wait_for_events(receiver, server, room, 7)
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        events = await wait_for_events(receiver, server, room, 9)
        await worker.ws.close()

    names = [e.event for e in events]
    assert names == [
        "room_started",
        "agent_job_started",
        "participant_joined",
        "track_published",
        "track_unpublished",
        "agent_job_ended",
        "participant_left",
        "agent_job_ended",
        "room_finished",
    ]
    started, ran, failed, finished = events[0], events[1], events[5], events[8]
    assert started.room.sid.startswith("RM_") and finished.room.sid == started.room.sid
    assert all(e.id.startswith("EV_") and abs(e.created_at - time.time()) < 60 for e in events)
    assert len({e.id for e in events}) == len(events)
    assert (ran.job.id, ran.job.agent_name, ran.job.state.worker_id) == (job_id, "runner", worker.id)
    assert ran.job.state.status == agent.JS_RUNNING and ran.job.state.participant_identity == "runner-agent"
    assert (events[2].participant.identity, events[6].participant.identity) == ("alice", "alice")
    assert events[3].track.sid == publication.sid == events[4].track.sid
    assert models.TrackSource.Name(events[3].track.source) == "MICROPHONE"
    assert finished.room_end_reason == models.ROOM_END_API_DELETE
    assert failed.job.agent_name == "nobody-serves-this" and failed.job.state.status == agent.JS_FAILED
    assert failed.job.state.error.startswith("no worker registered for agent 'nobody-serves-this'")
    assert failed.job.state.reason == agent.JSR_NO_CAPACITY
    ended = events[7].job
    assert (ended.id, ended.state.status, ended.state.reason) == (
        job_id,
        agent.JS_SUCCESS,
        agent.JSR_ROOM_CLOSED,
    )
    assert ended.state.error.startswith("terminated: room closed")

    # The Node SDK's receiver verifies the same requests and reads the same events.
    node = [e for e in await node_events(receiver, server, tmp_path) if e.get("room", {}).get("name") == room]
    assert [e["error"] for e in node if "error" in e] == []
    assert [e["event"] for e in node] == names
    assert [e["id"] for e in node] == [e.id for e in events]
    assert node[1]["job"]["state"]["status"] == "JS_RUNNING"
    assert node[1]["job"]["state"]["workerId"] == worker.id
    # (@livekit/protocol 1.51 predates JobState.reason: the Node SDK reads the status and the error.)
    assert node[5]["job"]["state"]["status"] == "JS_FAILED"
    assert node[5]["job"]["state"]["error"] == failed.job.state.error
    assert node[7]["job"]["state"]["status"] == "JS_SUCCESS"
    assert node[8]["roomEndReason"] == "ROOM_END_API_DELETE"
    assert node[3]["track"]["sid"] == publication.sid


async def test_a_receiver_down_then_up_gets_every_event_late_and_in_order(tmp_path: Path) -> None:
    down = Receiver()  # nothing listens on its port yet: connections are refused
    server = webhook_server(tmp_path / "server", down.url)
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
            rooms = [unique("late") for _ in range(5)]
            for room in rooms:
                await lk.room.create_room(api.CreateRoomRequest(name=room))  # with its automatic dispatch
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            await eventually(lambda: "webhook post failed" in server.log(), "a failed post", DEADLINE)
            await down.start()
            try:
                # Then it answers 503 for a while: retried too.
                down.failing = True
                await eventually(lambda: down.refused >= 2, "refused posts", DEADLINE)
                down.failing = False
                await eventually(lambda: len(down.requests) >= 15, "every event, late", DEADLINE)
                events = down.events(server)
            finally:
                await down.stop()
    finally:
        stop_server(server)
    names = ("room_started", "agent_job_ended", "room_finished")
    expected = [(name, room) for room in rooms for name in names]
    assert [(e.event, e.room.name) for e in events] == expected
    assert all(e.num_dropped == 0 for e in events)


async def test_an_unreachable_receiver_does_not_slow_dispatches(tmp_path: Path) -> None:
    # A blackhole-ish receiver: accepts the connection, never answers (each post waits for its timeout).
    hanging = asyncio.Event()

    async def never_answers(_: web.Request) -> web.Response:
        await hanging.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", never_answers)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server = webhook_server(tmp_path / "server", f"http://127.0.0.1:{port}/hook", timeout=30, queue_size=5)
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
            room = unique("busy")
            started = time.monotonic()
            for n in range(50):
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=f"agent-{n}", room=room)
                )
            elapsed = time.monotonic() - started
            dispatches = await lk.agent_dispatch.list_dispatch(room)
    finally:
        hanging.set()
        stop_server(server)
        await runner.cleanup()
    assert len(dispatches) == 51  # the 50, and the room's implicit automatic dispatch
    # Fifty posts would take 25 minutes at 30 s each; the API calls took what API calls take.
    assert elapsed < 10, f"50 CreateDispatch calls took {elapsed:.1f}s with a receiver that never answers"


def delivery_processes(pid: int) -> list[psutil.Process]:
    """The webhook delivery process(es) started by process `pid`."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "switchboard.webhook_delivery" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:  # ended (a zombie until reaped, or already gone)
            continue
    return found


async def test_a_delivery_process_that_dies_is_started_again(
    hooked_server: Server, receiver: Receiver
) -> None:
    server = hooked_server
    before, after = unique("before"), unique("after")
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=before))
        await wait_for_events(receiver, server, before, 1)
        [killed] = delivery_processes(server.process.pid)
        killed.kill()

        def replacement() -> list[psutil.Process]:
            return [p for p in delivery_processes(server.process.pid) if p.pid != killed.pid]

        await eventually(replacement, "a new delivery process", DEADLINE)
        await lk.room.create_room(api.CreateRoomRequest(name=after))
        [event] = await wait_for_events(receiver, server, after, 1)
    assert event.event == "room_started"
    assert "webhook delivery process exited (code -9)" in server.log()


async def test_the_delivery_process_yields_the_cpu_to_the_server(hooked_server: Server) -> None:
    """SCHED_IDLE, in the server's session: a session of its own would be a scheduling group of its own
    (the kernel's autogroups), which takes its fair share beside the server's whatever its policy."""
    [delivery] = delivery_processes(hooked_server.process.pid)
    policy = await eventually(  # set once its imports are done
        lambda: os.sched_getscheduler(delivery.pid),
        "the delivery process at SCHED_IDLE",
        DEADLINE,
        accept=lambda policy: policy == os.SCHED_IDLE,
    )
    assert policy == os.SCHED_IDLE
    assert os.getsid(delivery.pid) == os.getsid(hooked_server.process.pid)


async def test_a_stop_while_a_dead_delivery_process_is_being_replaced_ends_the_new_one(
    receiver: Receiver,
) -> None:
    class SlowToRestart(DeliveryProcess):
        """Its restart takes a while (a loaded machine's fork and exec), and says when it begins."""

        restarting = asyncio.Event()
        started = False

        async def _spawn(self) -> None:
            if self.started:
                self.restarting.set()
                await asyncio.sleep(0.3)
            self.started = True
            await super()._spawn()

    delivery = SlowToRestart(WebhookSettings(api_key="hookkey", urls=(receiver.url,)), "secret", "info")
    await delivery.start()
    [first] = delivery_processes(os.getpid())
    first.kill()
    await asyncio.wait_for(delivery.restarting.wait(), DEADLINE)
    await asyncio.wait_for(delivery.stop(), DEADLINE)
    assert not delivery_processes(os.getpid()), "the process started during the stop ended with it"


async def test_events_not_handed_over_are_counted_in_the_next_one(receiver: Receiver) -> None:
    """A delivery process that stops reading: once the pipe to it holds more than its backlog, events are
    dropped before they are made, and the next event it delivers tells how many."""
    secret = "a-webhook-secret-that-is-long-enough"
    settings = WebhookSettings(api_key="hookkey", urls=(receiver.url,))
    delivery = DeliveryProcess(settings, secret, "info", backlog=256 * 1024)
    bulky = "x" * 32 * 1024  # a room's metadata: a few events fill the backlog

    def room_started(name: str, metadata: str = "") -> WebhookEvent:
        return WebhookEvent(
            event="room_started", id=f"EV_{name}", room=models.Room(name=name, metadata=metadata)
        )

    verify = api.WebhookReceiver(api.TokenVerifier("hookkey", secret))
    await delivery.start()
    try:
        [process] = delivery_processes(os.getpid())
        process.send_signal(signal.SIGSTOP)
        handed = 0
        while delivery.wanted():
            delivery.put(room_started(f"bulky-{handed}", bulky))
            handed += 1
            await asyncio.sleep(0)  # the frames are written at the end of the loop's turn
        dropped = 1 + sum(not delivery.wanted() for _ in range(4))
        process.send_signal(signal.SIGCONT)
        await eventually(lambda: len(receiver.requests) == handed, f"{handed} events", DEADLINE)
        assert delivery.wanted()
        delivery.put(room_started("last"))
        await eventually(lambda: len(receiver.requests) == handed + 1, f"{handed + 1} events", DEADLINE)
    finally:
        await delivery.stop()
    events = [verify.receive(r["body"], r["authorization"]) for r in receiver.requests]
    assert [e.room.name for e in events] == [f"bulky-{n}" for n in range(handed)] + ["last"]
    assert [e.num_dropped for e in events] == [0] * handed + [dropped]
    assert handed >= 8  # the pipe's own buffer and the backlog were filled first
    assert not delivery_processes(os.getpid()), "the delivery process ends when its pipe is closed"


async def test_the_delivery_process_ends_when_the_server_is_killed(tmp_path: Path) -> None:
    server = webhook_server(tmp_path / "server", "http://127.0.0.1:9/unreachable", shutdown_grace=0.5)
    try:
        [delivery] = delivery_processes(server.process.pid)
        server.process.kill()  # no shutdown: the pipe closes with the process
        await asyncio.to_thread(server.process.wait)
        gone, _ = await asyncio.to_thread(psutil.wait_procs, [delivery], DEADLINE)
    finally:
        stop_server(server)
    assert gone, "the delivery process outlived its server"


async def test_rooms_closed_by_a_shutdown_are_told_before_the_server_exits(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    server = webhook_server(tmp_path / "server", receiver.url)
    try:
        room = unique("last")
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=room))
        await wait_for_events(receiver, server, room, 1)
        [delivery] = delivery_processes(server.process.pid)
        server.process.terminate()
        code = await asyncio.to_thread(server.process.wait, 15)
        assert code == 0, server.log()
        assert not delivery.is_running(), "the delivery process ends with the server"
        events = receiver.of_room(server, room)
    finally:
        stop_server(server)
        await receiver.stop()
    assert [e.event for e in events] == ["room_started", "agent_job_ended", "room_finished"]
    assert events[2].room_end_reason == models.ROOM_END_SERVER_SHUTDOWN
    assert events[1].job.state.error.startswith("terminated: server shutting down")
