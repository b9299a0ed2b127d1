"""Webhooks: engine decisions, sent as LiveKit sends them, to the URLs of the `webhook` config section.

Each event is a livekit `WebhookEvent`, written as LiveKit's server writes it (Go protojson: camelCase,
defaults omitted), signed with one of the server's API keys: the `Authorization` header carries a JWT
(HS256, issuer = the key) whose `sha256` claim is the base64 SHA-256 of the body, so the official
`WebhookReceiver` of every server SDK verifies it unchanged.

Delivery never slows the server: a decision becomes an event in a bounded queue per URL, and one task per
URL posts them, in order, retrying a failed post with backoff. When a queue is full, or an event is given
up after its attempts, the event is dropped and counted in `num_dropped` of the next delivered event.

What the engine's call path pays is kept to the cheap facts of the moment (a room's proto, a shallow copy
of a job): the event's message and its JSON body are made by the delivery task, once for every URL, and
not at all for an event every queue drops (bench/dispatch.py --phases observed prices it).
"""

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from switchboard.core import ids
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.events import (
    JobEnded,
    JobStarted,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomStarted,
    TrackPublished,
    TrackUnpublished,
)
from switchboard.core.jobs import Job
from switchboard.runtime import Runtime
from switchboard.webhook_post import HttpPoster
from switchboard.wire import job_end_reason, job_to_proto, participant_to_proto, room_to_proto, track_to_proto

log = logging.getLogger("switchboard.webhooks")

EVENT_ID = "EV_"
CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL = 300
"""The signature's validity, as LiveKit's (5 minutes)."""


@dataclass(frozen=True)
class WebhookSettings:
    """The `webhook` section: livekit.yaml's `api_key` and `urls`, and how delivery behaves."""

    api_key: str = ""
    urls: tuple[str, ...] = ()
    queue_size: int = 1000
    """Events waiting per URL; beyond that, new events are dropped (and counted)."""
    timeout: float = 5.0
    """How long one post may take."""
    retry_delay: float = 0.5
    """The wait after a failed post, doubled after each further failure of the same event."""
    retry_delay_max: float = 10.0
    max_attempts: int = 10
    """Posts of one event before it is given up (dropped and counted); later events wait until then."""
    shutdown_grace: float = 5.0
    """At shutdown, how long the events still queued may take to be delivered."""


Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]
"""Post a body with headers to a URL, return the HTTP status (raise on a connection error)."""
Sleep = Callable[[float], Awaitable[None]]
Signer = Callable[[bytes], str]


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_JWT_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')


class WebhookSigner:
    """The `Authorization` header for a body, as LiveKit signs webhooks (no `Bearer` prefix): an HS256 JWT
    with the claims of `auth.tokens.mint_token` (issuer the key, an empty video grant) and the body's
    base64 SHA-256 as `sha256`.

    Written out rather than through PyJWT, whose generic path cost four times as much for every event
    delivered; the secret's HMAC state is made once and copied per signature. The same bytes as PyJWT's
    (tests/unit/test_webhooks.py compares them), and the official receivers verify them."""

    def __init__(self, api_key: str, api_secret: str, clock: Callable[[], float] = time.time) -> None:
        """`clock`: the wall clock, which the receiver checks the token's times against."""
        self._issuer = api_key
        self._mac = hmac.new(api_secret.encode(), digestmod=hashlib.sha256)
        self._clock = clock

    def __call__(self, body: bytes) -> str:
        issued = int(self._clock())
        claims = {
            "iss": self._issuer,
            "sub": "",
            "nbf": issued,
            "exp": issued + TOKEN_TTL,
            "video": {},
            "sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        }
        signing_input = _JWT_HEADER + b"." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        mac = self._mac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + _b64url(mac.digest())).decode()


def encode(event: WebhookEvent) -> bytes:
    """The body as LiveKit's server writes it (protojson): camelCase names, defaults left out."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")).encode()


class Event:
    """One event, shared by every URL's queue: what the engine decided, captured cheaply when it did; the
    message is built when the first sender gets to it, and its body is kept for the next sender that
    reports the same `num_dropped`."""

    __slots__ = ("_body", "_facts", "_message", "created_at", "name")

    def __init__(self, name: str, created_at: int, facts: Callable[[], dict[str, Any]]) -> None:
        """`facts`: the event's fields (room, participant, job...), from snapshots taken at the decision."""
        self.name = name
        self.created_at = created_at
        self._facts: Callable[[], dict[str, Any]] | None = facts
        self._message: WebhookEvent | None = None
        self._body: tuple[int, bytes] | None = None

    @property
    def message(self) -> WebhookEvent:
        if self._message is None:
            assert self._facts is not None
            self._message = WebhookEvent(
                event=self.name, id=ids.new_id(EVENT_ID), created_at=self.created_at, **self._facts()
            )
            self._facts = None  # the snapshots are not needed again
        return self._message

    def body(self, num_dropped: int) -> bytes:
        """The body telling `num_dropped` events dropped before it."""
        if self._body is None or self._body[0] != num_dropped:
            message = self.message
            message.num_dropped = num_dropped
            self._body = (num_dropped, encode(message))
        return self._body[1]


class UrlSender:
    """One URL's queue and the task that delivers it, one event at a time, in order."""

    def __init__(self, url: str, settings: WebhookSettings, signer: Signer, post: Post, sleep: Sleep) -> None:
        self.url = url
        self.settings = settings
        self._sign = signer
        self._post = post
        self._sleep = sleep
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        """Events dropped since the last delivered event said how many were."""
        self.delivered = 0
        self.failed_posts = 0

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.settings.queue_size

    def put(self, event: Event) -> None:
        if self.full:
            self.dropped += 1
            return
        self._queue.append(event)
        if not self._ready.is_set():
            self._idle.clear()
            self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                # Woken by an engine step: the tasks that step started (its messages to workers, for one)
                # were queued after this one; they go first, not after this event's encoding and post.
                await asyncio.sleep(0)
                continue
            await self._deliver(self._queue[0])
            self._queue.popleft()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _deliver(self, event: Event) -> None:
        s = self.settings
        for attempt in range(1, s.max_attempts + 1):
            reported = self.dropped
            body = event.body(reported)
            # Signed for each post: a retry may come minutes later, past an earlier signature's validity.
            headers = {"Authorization": self._sign(body), "Content-Type": CONTENT_TYPE}
            try:
                status = await self._post(self.url, body, headers)
                problem = "" if 200 <= status < 300 else f"HTTP {status}"
            except (TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not problem:
                self.dropped -= reported
                self.delivered += 1
                log.debug("webhook sent url=%s event=%s", self.url, event.name)
                return
            self.failed_posts += 1
            if attempt == s.max_attempts:
                break
            delay = min(s.retry_delay * 2 ** (attempt - 1), s.retry_delay_max)
            log.warning(
                "webhook post failed url=%s event=%s id=%s attempt=%d (%s); retrying in %gs",
                self.url,
                event.name,
                event.message.id,
                attempt,
                problem,
                delay,
            )
            await self._sleep(delay)
        self.dropped += 1
        log.error(
            "webhook dropped url=%s event=%s id=%s after %d attempts",
            self.url,
            event.name,
            event.message.id,
            attempt,
        )


class Webhooks:
    """Turns the engine's decisions into webhook events and hands them to one sender per URL."""

    def __init__(
        self,
        settings: WebhookSettings,
        api_secret: str,
        runtime: Runtime,
        *,
        post: Post | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._posters = {url: HttpPoster(url, settings.timeout) for url in settings.urls}
        signer = WebhookSigner(settings.api_key, api_secret)
        self.senders = [
            UrlSender(url, settings, signer, post or self._http_post, sleep) for url in settings.urls
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(sender.run(), name=f"webhooks {sender.url}") for sender in self.senders
        ]

    async def stop(self) -> None:
        """Give the queued events `shutdown_grace` to go out, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(sender.wait_idle() for sender in self.senders)), self.settings.shutdown_grace
            )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = sum(sender.pending for sender in self.senders)
        if left:
            log.warning("webhooks: %d events not delivered at shutdown", left)
        for poster in self._posters.values():
            poster.close()

    async def _http_post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        return await self._posters[url].post(body, headers)

    # The engine's decisions, as events (wired in switchboard.effects). Each handler first asks whether
    # any queue has room, so that an event every queue would drop costs no snapshot.

    def _wanted(self) -> bool:
        for sender in self.senders:
            if not sender.full:
                return True
        for sender in self.senders:
            sender.dropped += 1
        return False

    def _emit(self, name: str, facts: Callable[[], dict[str, Any]]) -> None:
        event = Event(name, int(self.runtime.now()), facts)
        for sender in self.senders:
            sender.put(event)

    def _room(self, name: str, sid: str = "") -> models.Room:
        room = self.runtime.engine.find_room(name, self.runtime.now())
        if room is None or (sid and room.sid != sid):
            return models.Room(name=name, sid=sid)
        return room_to_proto(room)

    def room_started(self, decision: RoomStarted) -> None:
        if self._wanted():
            room = self._room(decision.room, decision.sid)
            self._emit("room_started", lambda: {"room": room})

    def room_closed(self, decision: RoomClosed) -> None:
        if self._wanted():
            room = self._room(decision.room, decision.sid)
            reason = _room_end_reason(decision.reason)
            self._emit("room_finished", lambda: {"room": room, "room_end_reason": reason})

    def participant_joined(self, decision: ParticipantJoined) -> None:
        if self._wanted():
            room, participant = self._room(decision.room), participant_to_proto(decision.participant)
            self._emit("participant_joined", lambda: {"room": room, "participant": participant})

    def participant_left(self, decision: ParticipantLeft) -> None:
        if self._wanted():
            # As LiveKit: one whose media never connected (it joined, ICE did not complete) left by an
            # aborted connection attempt, not as a participant who was there.
            event = "participant_left" if decision.participant.active else "participant_connection_aborted"
            room = self._room(decision.room)
            participant = participant_to_proto(decision.participant, state="DISCONNECTED")
            self._emit(event, lambda: {"room": room, "participant": participant})

    def _track_event(self, name: str, decision: TrackPublished | TrackUnpublished) -> None:
        if self._wanted():
            room, participant = self._room(decision.room), participant_to_proto(decision.participant)
            track = track_to_proto(decision.track)
            self._emit(name, lambda: {"room": room, "participant": participant, "track": track})

    def track_published(self, decision: TrackPublished) -> None:
        self._track_event("track_published", decision)

    def track_unpublished(self, decision: TrackUnpublished) -> None:
        self._track_event("track_unpublished", decision)

    def _job_event(self, name: str, job: Job) -> None:
        if not self._wanted():
            return
        room = self.runtime.engine.find_room(job.room, self.runtime.now())
        dispatch = room.dispatches.get(job.dispatch_id) if room is not None else None
        spec = (
            dispatch.spec if dispatch is not None else DispatchSpec(job.agent_name, deployment=job.deployment)
        )
        room_message = room_to_proto(room) if room is not None else None
        # job_to_proto reads the job's own fields and whether it had earlier attempts, which cannot change
        # its answer once the job started or ended: a shallow copy keeps them as they are now, while the
        # job itself moves on before the event is sent.
        snapshot = copy.copy(job)

        def facts() -> dict[str, Any]:
            message = job_to_proto(snapshot, spec, room_message)
            if snapshot.ended:
                message.state.reason = job_end_reason(snapshot)
            return {"room": message.room, "job": message}

        self._emit(name, facts)

    def job_started(self, decision: JobStarted) -> None:
        self._job_event("agent_job_started", decision.job)

    def job_ended(self, decision: JobEnded) -> None:
        self._job_event("agent_job_ended", decision.job)


def _room_end_reason(reason: str) -> models.RoomEndReason:
    if reason.startswith("deleted"):
        return models.ROOM_END_API_DELETE
    if reason.endswith("timeout"):
        return models.ROOM_END_IDLE_TIMEOUT
    if reason == "server shut down":
        return models.ROOM_END_SERVER_SHUTDOWN
    return models.ROOM_END_UNKNOWN
