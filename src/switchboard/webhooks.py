"""Webhooks: engine decisions, sent as LiveKit sends them, to the URLs of the `webhook` config section.

Each event is a livekit `WebhookEvent`, written as LiveKit's server writes it (Go protojson: camelCase,
defaults omitted), signed with one of the server's API keys: the `Authorization` header carries a JWT
(HS256, issuer = the key) whose `sha256` claim is the base64 SHA-256 of the body, so the official
`WebhookReceiver` of every server SDK verifies it unchanged.

Delivery never slows the server: a decision becomes an event in a bounded queue per URL, and one task per
URL posts them, in order, retrying a failed post with backoff. When a queue is full, or an event is given
up after its attempts, the event is dropped and counted in `num_dropped` of the next delivered event.
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from google.protobuf import json_format
from livekit.protocol import agent, models
from livekit.protocol.webhook import WebhookEvent

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
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


def sign(api_key: str, api_secret: str, body: bytes, now: float | None = None) -> str:
    """The `Authorization` header for `body`, as LiveKit signs webhooks (no `Bearer` prefix)."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return mint_token(
        api_key, api_secret, video=VideoGrant(), extra={"sha256": digest}, ttl=TOKEN_TTL, now=now
    )


def encode(event: WebhookEvent) -> bytes:
    """The body as LiveKit's server writes it (protojson): camelCase names, defaults left out."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")).encode()


class UrlSender:
    """One URL's queue and the task that delivers it, one event at a time, in order."""

    def __init__(
        self, url: str, settings: WebhookSettings, signer: Callable[[bytes], str], post: Post, sleep: Sleep
    ) -> None:
        self.url = url
        self.settings = settings
        self._sign = signer
        self._post = post
        self._sleep = sleep
        self._queue: deque[WebhookEvent] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        """Events dropped since the last delivered event said how many were."""
        self.delivered = 0
        self.failed_posts = 0

    def put(self, event: WebhookEvent) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
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
                continue
            await self._deliver(self._queue[0])
            self._queue.popleft()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _deliver(self, event: WebhookEvent) -> None:
        s = self.settings
        for attempt in range(1, s.max_attempts + 1):
            reported = self.dropped
            message = WebhookEvent()
            message.CopyFrom(event)
            message.num_dropped = reported
            body = encode(message)
            headers = {"Authorization": self._sign(body), "Content-Type": CONTENT_TYPE}
            try:
                status = await self._post(self.url, body, headers)
                problem = "" if 200 <= status < 300 else f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not problem:
                self.dropped -= reported
                self.delivered += 1
                log.debug("webhook sent url=%s event=%s id=%s", self.url, event.event, event.id)
                return
            self.failed_posts += 1
            if attempt == s.max_attempts:
                break
            delay = min(s.retry_delay * 2 ** (attempt - 1), s.retry_delay_max)
            log.warning(
                "webhook post failed url=%s event=%s id=%s attempt=%d (%s); retrying in %gs",
                self.url,
                event.event,
                event.id,
                attempt,
                problem,
                delay,
            )
            await self._sleep(delay)
        self.dropped += 1
        log.error(
            "webhook dropped url=%s event=%s id=%s after %d attempts",
            self.url,
            event.event,
            event.id,
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
        self._session: aiohttp.ClientSession | None = None

        def signer(body: bytes) -> str:
            return sign(settings.api_key, api_secret, body, runtime.now())

        self.senders = [
            UrlSender(url, settings, signer, post or self._http_post, sleep) for url in settings.urls
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
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
        if self._session is not None:
            await self._session.close()

    async def _http_post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        assert self._session is not None
        async with self._session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status

    # The engine's decisions, as events (wired in switchboard.effects)

    def _emit(self, name: str, **fields: Any) -> None:
        event = WebhookEvent(
            event=name, id=ids.new_id(EVENT_ID), created_at=int(self.runtime.now()), **fields
        )
        for sender in self.senders:
            sender.put(event)

    def _room(self, name: str, sid: str = "") -> models.Room:
        room = self.runtime.engine.find_room(name, self.runtime.now())
        if room is None or (sid and room.sid != sid):
            return models.Room(name=name, sid=sid)
        return room_to_proto(room)

    def room_started(self, decision: RoomStarted) -> None:
        self._emit("room_started", room=self._room(decision.room, decision.sid))

    def room_closed(self, decision: RoomClosed) -> None:
        self._emit(
            "room_finished",
            room=self._room(decision.room, decision.sid),
            room_end_reason=_room_end_reason(decision.reason),
        )

    def participant_joined(self, decision: ParticipantJoined) -> None:
        participant = participant_to_proto(decision.participant)
        self._emit("participant_joined", room=self._room(decision.room), participant=participant)

    def participant_left(self, decision: ParticipantLeft) -> None:
        # As LiveKit: one whose media never connected (it joined, ICE did not complete) left by an
        # aborted connection attempt, not as a participant who was there.
        event = "participant_left" if decision.participant.active else "participant_connection_aborted"
        participant = participant_to_proto(decision.participant, state="DISCONNECTED")
        self._emit(event, room=self._room(decision.room), participant=participant)

    def track_published(self, decision: TrackPublished) -> None:
        self._emit(
            "track_published",
            room=self._room(decision.room),
            participant=participant_to_proto(decision.participant),
            track=track_to_proto(decision.track),
        )

    def track_unpublished(self, decision: TrackUnpublished) -> None:
        self._emit(
            "track_unpublished",
            room=self._room(decision.room),
            participant=participant_to_proto(decision.participant),
            track=track_to_proto(decision.track),
        )

    def _job(self, job: Job) -> agent.Job:
        room = self.runtime.engine.find_room(job.room, self.runtime.now())
        dispatch = room.dispatches.get(job.dispatch_id) if room is not None else None
        spec = (
            dispatch.spec if dispatch is not None else DispatchSpec(job.agent_name, deployment=job.deployment)
        )
        message = job_to_proto(job, spec, room_to_proto(room) if room is not None else None)
        if job.ended:
            message.state.reason = job_end_reason(job)
        return message

    def job_started(self, decision: JobStarted) -> None:
        job = self._job(decision.job)
        self._emit("agent_job_started", room=job.room, job=job)

    def job_ended(self, decision: JobEnded) -> None:
        job = self._job(decision.job)
        self._emit("agent_job_ended", room=job.room, job=job)


def _room_end_reason(reason: str) -> models.RoomEndReason:
    if reason.startswith("deleted"):
        return models.ROOM_END_API_DELETE
    if reason.endswith("timeout"):
        return models.ROOM_END_IDLE_TIMEOUT
    if reason == "server shut down":
        return models.ROOM_END_SERVER_SHUTDOWN
    return models.ROOM_END_UNKNOWN
