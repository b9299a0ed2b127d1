"""Webhook delivery without a network: one URL's queue, its order, retries, backoff and drop counting, with
the post and the clock's sleep injected; and the signature, checked by the official Python receiver."""

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from livekit import api
from livekit.protocol import agent, models
from livekit.protocol.webhook import WebhookEvent

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.events import JobEnded, JobStarted, RoomClosed, RoomStarted
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerSpec
from switchboard.runtime import Runtime
from switchboard.webhook_delivery import Delivery, Event, UrlSender, WebhookSettings, WebhookSigner, encode
from switchboard.webhooks import Webhooks
from switchboard.wire import job_end_reason

T = TypeVar("T")

KEY, SECRET = "hookkey", "a-webhook-secret-that-is-long-enough"
URL = "http://receiver.invalid/hook"


class Receiver:
    """The injected post: records what was posted; `answers` says how each call ends, in turn (an int
    is an HTTP status, an exception is raised); `gate`, when set, holds every post until it is opened."""

    def __init__(self, answers: list[int | Exception] | None = None) -> None:
        self.answers = list(answers or [])
        self.posts: list[tuple[dict[str, object], dict[str, str]]] = []
        self.bodies: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        assert url == URL
        if self.gate is not None:
            await self.gate.wait()
        self.posts.append((json.loads(body), headers))
        self.bodies.append(body.decode())
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer

    def delivered(self) -> list[tuple[str, int]]:
        """(room name, numDropped) of every post, in order: each test event names its own room."""
        return [(_room_name(body), int(str(body.get("numDropped", 0)))) for body, _ in self.posts]


def _room_name(body: dict[str, object]) -> str:
    room = body["room"]
    assert isinstance(room, dict)
    return str(room["name"])


class Sleeps:
    """The injected sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def event(n: int) -> Event:
    room = models.Room(name=f"room-{n}")
    return Event(WebhookEvent(event="room_started", id=f"EV_{n}", created_at=1000 + n, room=room))


async def settle(done: Callable[[], bool]) -> None:
    """Let the sender's task run until `done` (it never waits on real time here)."""
    for _ in range(10_000):
        if done():
            return
        await asyncio.sleep(0)
    pytest.fail("the sender did not get there")


async def run_sender(
    receiver: Receiver, sleeps: Sleeps, body: Callable[[UrlSender], Awaitable[None]], **settings: float
) -> UrlSender:
    config = WebhookSettings(api_key=KEY, urls=(URL,), **settings)  # type: ignore[arg-type]
    sender = UrlSender(URL, config, WebhookSigner(KEY, SECRET), receiver, sleeps)
    task = asyncio.create_task(sender.run())
    try:
        await body(sender)
    finally:
        task.cancel()
    return sender


async def test_events_go_out_in_order_signed_as_livekit_signs_them() -> None:
    receiver, sleeps = Receiver(), Sleeps()

    async def body(sender: UrlSender) -> None:
        for n in range(5):
            sender.put(event(n))
        await settle(lambda: len(receiver.posts) == 5)

    await run_sender(receiver, sleeps, body)
    assert receiver.delivered() == [(f"room-{n}", 0) for n in range(5)]
    verify = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    for (posted, headers), text in zip(receiver.posts, receiver.bodies, strict=True):
        assert headers["Content-Type"] == "application/webhook+json"
        received = verify.receive(text, headers["Authorization"])
        assert received.id == posted["id"] and received.event == "room_started"
        with pytest.raises(Exception, match="hash mismatch"):
            verify.receive(text.replace("room_started", "room_finished"), headers["Authorization"])
    with pytest.raises(Exception, match="Signature verification failed"):
        api.WebhookReceiver(api.TokenVerifier(KEY, "another-secret-that-is-long-enough!!")).receive(
            receiver.bodies[0], receiver.posts[0][1]["Authorization"]
        )
    assert sleeps.delays == []


async def test_a_failed_post_is_retried_with_doubling_backoff_and_later_events_wait() -> None:
    receiver = Receiver([503, ConnectionResetError("reset"), TimeoutError(), 500, 200])
    sleeps = Sleeps()

    async def body(sender: UrlSender) -> None:
        sender.put(event(1))
        sender.put(event(2))
        await settle(lambda: len(receiver.posts) == 6)

    await run_sender(receiver, sleeps, body, retry_delay=0.5, retry_delay_max=3.0)
    assert [i for i, _ in receiver.delivered()] == ["room-1"] * 5 + ["room-2"]
    assert sleeps.delays == [0.5, 1.0, 2.0, 3.0]


async def test_a_full_queue_drops_new_events_and_the_next_delivered_event_counts_them() -> None:
    receiver, sleeps = Receiver([500]), Sleeps()
    receiver.gate = asyncio.Event()

    async def body(sender: UrlSender) -> None:
        for n in range(6):  # 1 and 2 queued (1 being posted), 3..6 dropped
            sender.put(event(n + 1))
        assert sender.dropped == 4
        receiver.gate.set()  # type: ignore[union-attr]
        await settle(lambda: len(receiver.posts) == 3)
        sender.put(event(7))
        await settle(lambda: len(receiver.posts) == 4)

    sender = await run_sender(receiver, sleeps, body, queue_size=2)
    # EV_1's failed post and its retry both report the 4 drops; once delivered, they are not reported again.
    assert receiver.delivered() == [("room-1", 4), ("room-1", 4), ("room-2", 0), ("room-7", 0)]
    assert sender.dropped == 0 and sender.delivered == 3


async def test_an_event_given_up_after_its_attempts_is_counted_in_the_next_one() -> None:
    receiver, sleeps = Receiver([500, 500, 500]), Sleeps()

    async def body(sender: UrlSender) -> None:
        sender.put(event(1))
        sender.put(event(2))
        await settle(lambda: len(receiver.posts) == 4)

    await run_sender(receiver, sleeps, body, max_attempts=3, retry_delay=0.1)
    assert receiver.delivered() == [("room-1", 0)] * 3 + [("room-2", 1)]
    assert sleeps.delays == [0.1, 0.2]


def test_the_body_is_protojson_as_livekit_writes_it() -> None:
    message = WebhookEvent(event="participant_left", id="EV_x", created_at=1234, num_dropped=2)
    message.room.name = "r"
    assert json.loads(encode(message)) == {
        "event": "participant_left",
        "id": "EV_x",
        "createdAt": "1234",
        "numDropped": 2,
        "room": {"name": "r"},
    }


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("terminated: dispatch deleted", "JSR_DISPATCH_DELETED"),
        ("terminated: room closed (deleted by API request)", "JSR_ROOM_CLOSED"),
        ("no worker registered for agent 'x' within 1s", "JSR_NO_CAPACITY"),
        ("no worker took the job for agent 'x' within 1s: AW_1 declined it", "JSR_NO_CAPACITY"),
        ("job failed on worker AW_1: boom", "JSR_UNSPECIFIED"),
    ],
)
def test_job_end_reasons(error: str, reason: str) -> None:
    from livekit.protocol import agent

    job = Job(id="AJ_1", dispatch_id="AD_1", room="r", type=JobType.ROOM, agent_name="x", created_at=0.0)
    job.status, job.error = JobStatus.FAILED, error
    assert agent.JobStateReason.Name(job_end_reason(job)) == reason


def test_the_signature_is_the_token_mint_token_makes() -> None:
    body = b'{"event":"room_started"}'
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    expected = mint_token(KEY, SECRET, video=VideoGrant(), extra={"sha256": digest}, ttl=300, now=1234.5)
    assert WebhookSigner(KEY, SECRET, lambda: 1234.5)(body) == expected


async def started_webhooks(delivery: Delivery, runtime: Runtime) -> Webhooks:
    """Webhooks of the room and job decisions (as switchboard.effects wires them), started."""
    webhooks = Webhooks(delivery, runtime)
    runtime.effects.on(RoomStarted, webhooks.room_started)
    runtime.effects.on(JobStarted, webhooks.job_started)
    runtime.effects.on(JobEnded, webhooks.job_ended)
    runtime.effects.on(RoomClosed, webhooks.room_closed)
    await webhooks.start()
    return webhooks


async def test_events_are_the_engine_state_when_decided_made_once_for_every_url() -> None:
    """A job that starts and ends before its events go out is told as it was at each moment; both URLs
    get the same events (one id each), and an event no queue had room for is counted, not made."""
    clock = [100.0]
    runtime = Runtime(Engine(EngineSettings(empty_timeout=10_000)), lambda: clock[0])

    def at(now: float, change: Callable[[Engine], T]) -> T:
        clock[0] = now
        return runtime.call(change)

    second_url = URL + "/2"
    posts: dict[str, list[tuple[bytes, dict[str, str]]]] = {URL: [], second_url: []}
    gate = asyncio.Event()

    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        await gate.wait()
        posts[url].append((body, headers))
        return 200

    settings = WebhookSettings(api_key=KEY, urls=(URL, second_url), queue_size=3)
    webhooks = await started_webhooks(Delivery(settings, SECRET, post=post), runtime)
    try:
        worker = at(100, lambda e: e.register_worker(WorkerSpec(agent_name="a"), 100)).id
        room = at(
            100, lambda e: e.create_room(RoomSpec(name="r", agents=(DispatchSpec(agent_name="a"),)), 100)
        )
        [job] = runtime.engine.jobs.values()
        at(101, lambda e: e.availability_answer(worker, job.id, AvailabilityAnswer(available=True), 101))
        at(102, lambda e: e.job_update(worker, job.id, JobUpdate.RUNNING, "", 102))
        at(103, lambda e: e.job_update(worker, job.id, JobUpdate.SUCCESS, "", 103))
        at(104, lambda e: e.delete_room("r", 104))  # both queues are full: its room_finished is dropped
        gate.set()
        await settle(lambda: len(posts[second_url]) == 3)
        at(105, lambda e: e.create_room(RoomSpec(name="s"), 105))
        await settle(lambda: len(posts[second_url]) == 4)
    finally:
        await webhooks.stop()

    verify = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    told = {
        url: [verify.receive(body.decode(), h["Authorization"]) for body, h in sent]
        for url, sent in posts.items()
    }
    assert [(e.id, e.num_dropped) for e in told[URL]] == [(e.id, e.num_dropped) for e in told[second_url]]
    assert len({e.id for e in told[URL]}) == 4
    started_room, started, ended, next_room = told[URL]
    assert (started_room.event, started_room.room.sid, started_room.created_at) == (
        "room_started",
        room.sid,
        100,
    )
    assert (started.event, started.created_at, started.job.id) == ("agent_job_started", 102, job.id)
    assert (started.job.state.status, started.job.state.worker_id, started.job.state.ended_at) == (
        agent.JS_RUNNING,
        worker,
        0,
    )
    assert (ended.event, ended.job.state.status, ended.job.state.ended_at) == (
        "agent_job_ended",
        agent.JS_SUCCESS,
        103 * 10**9,
    )
    assert (next_room.event, next_room.room.name) == ("room_started", "s")
    # room_finished was dropped before the senders ran at all: the first event they sent tells it.
    assert [e.num_dropped for e in told[URL]] == [1, 0, 0, 0]


async def test_a_room_that_moves_to_another_node_neither_finishes_nor_starts_again() -> None:
    """Its node lost its lease and handed it over: the room goes on elsewhere with the same sid and jobs,
    so that node sends no room_finished or agent_job_ended, and the node that restores it no room_started
    (participants did leave: they reconnect to the new node)."""
    runtime = Runtime(Engine(EngineSettings(empty_timeout=10_000)), lambda: 100.0)
    posts: list[WebhookEvent] = []
    verify = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))

    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        posts.append(verify.receive(body.decode(), headers["Authorization"]))
        return 200

    delivery = Delivery(WebhookSettings(api_key=KEY, urls=(URL,)), SECRET, post=post)
    webhooks = await started_webhooks(delivery, runtime)
    try:
        worker = runtime.call(lambda e: e.register_worker(WorkerSpec(agent_name="a"), 100)).id
        room = runtime.call(lambda e: e.create_room(RoomSpec(name="r", agents=(DispatchSpec("a"),)), 100))
        [job] = runtime.engine.jobs.values()
        runtime.call(lambda e: e.availability_answer(worker, job.id, AvailabilityAnswer(available=True), 100))
        runtime.call(lambda e: e.job_update(worker, job.id, JobUpdate.RUNNING, "", 100))
        runtime.call(lambda e: e.hand_over_rooms("node lease lost", 100))
        webhooks.room_started(RoomStarted("r", room.sid, restored=True))  # as the next node restores it
        runtime.call(lambda e: e.create_room(RoomSpec(name="s"), 100))  # the last event
        await settle(lambda: len(posts) == 3)
    finally:
        await webhooks.stop()
    assert [(e.event, e.room.name) for e in posts] == [
        ("room_started", "r"),
        ("agent_job_started", "r"),
        ("room_started", "s"),
    ]
