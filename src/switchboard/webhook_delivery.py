"""Webhook delivery: each URL's queue, posted in order with retries, in a process of its own.

The server hands every event over a pipe to `python -m switchboard.webhook_delivery`, which signs, writes
and posts it; what that costs (the JSON body, the signature, the HTTP exchange: most of an event's price)
is then not paid on the server's event loop, so watching the server slows its dispatches much less. The
process runs at the lowest CPU priority (Linux's SCHED_IDLE): it takes the time the server leaves, and
another core where the machine has one. When it falls behind, its queues fill and then the pipe does, and
events are dropped, by it or by the server, and counted in `num_dropped` of the next delivered event.

Each event is a livekit `WebhookEvent`, written as LiveKit's server writes it (Go protojson: camelCase,
defaults omitted), signed with one of the server's API keys: the `Authorization` header carries a JWT
(HS256, issuer = the key) whose `sha256` claim is the base64 SHA-256 of the body, so the official
`WebhookReceiver` of every server SDK verifies it unchanged.

The pipe carries frames: 4 bytes of length and 4 of a count, then that many bytes. The first frame is the
settings (JSON, the signing secret among them); each next one is a serialized `WebhookEvent`, its count
the events the server dropped since the previous one. The end of the pipe is the server's shutdown: the
queued events get `shutdown_grace` to go out.
"""

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from livekit.protocol.webhook import WebhookEvent

from switchboard import logs
from switchboard.auth.tokens import encode_jwt
from switchboard.event_loop import loop_factory
from switchboard.webhook_post import HttpPoster

log = logging.getLogger("switchboard.webhooks")

CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL = 300
"""The signature's validity, as LiveKit's (5 minutes)."""
FRAME = struct.Struct(">II")
"""A frame's head: the length of its body, and the events dropped before it."""


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


class WebhookSigner:
    """The `Authorization` header for a body, as LiveKit signs webhooks (no `Bearer` prefix): an HS256 JWT
    with the claims of `auth.tokens.mint_token` (issuer the key, an empty video grant) and the body's
    base64 SHA-256 as `sha256`. The claims are written out rather than through `mint_token`'s grant
    conversions, and signed by `encode_jwt`, PyJWT's bytes without its per-call cost; the official
    receivers verify them (tests/unit/test_webhooks.py compares them with `mint_token`'s)."""

    def __init__(self, api_key: str, api_secret: str, clock: Callable[[], float] = time.time) -> None:
        """`clock`: the wall clock, which the receiver checks the token's times against."""
        self._issuer = api_key
        self._secret = api_secret
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
        return encode_jwt(claims, self._secret)


def encode(event: WebhookEvent) -> bytes:
    """The body as LiveKit's server writes it (protojson): camelCase names, defaults left out."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")).encode()


class Event:
    """One event, shared by every URL's queue; its body is kept for the next sender that reports the same
    `num_dropped`."""

    __slots__ = ("_body", "message")

    def __init__(self, message: WebhookEvent) -> None:
        self.message = message
        self._body: tuple[int, bytes] | None = None

    @property
    def name(self) -> str:
        return self.message.event

    def body(self, num_dropped: int) -> bytes:
        """The body telling `num_dropped` events dropped before it."""
        if self._body is None or self._body[0] != num_dropped:
            self.message.num_dropped = num_dropped
            self._body = (num_dropped, encode(self.message))
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


class Delivery:
    """Every URL's sender: what the delivery process runs (and tests run in theirs)."""

    def __init__(
        self,
        settings: WebhookSettings,
        api_secret: str,
        *,
        post: Post | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._posters = {url: HttpPoster(url, settings.timeout) for url in settings.urls}
        signer = WebhookSigner(settings.api_key, api_secret)
        self.senders = [
            UrlSender(url, settings, signer, post or self._http_post, sleep) for url in settings.urls
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def wanted(self) -> bool:
        """Whether any queue has room for one more event; if none has, the event is counted as dropped."""
        for sender in self.senders:
            if not sender.full:
                return True
        self.count_dropped(1)
        return False

    def count_dropped(self, count: int) -> None:
        for sender in self.senders:
            sender.dropped += count

    def put(self, message: WebhookEvent) -> None:
        event = Event(message)
        for sender in self.senders:
            sender.put(event)

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


# ------------------------------------------------------------------------------------- the process's side


def settings_frame(settings: WebhookSettings, api_secret: str, log_level: str) -> bytes:
    told = {"settings": dataclasses.asdict(settings), "secret": api_secret, "log_level": log_level}
    return frame(json.dumps(told).encode(), 0)


def frame(body: bytes, dropped: int) -> bytes:
    return FRAME.pack(len(body), dropped) + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    length, dropped = FRAME.unpack(await reader.readexactly(FRAME.size))
    return await reader.readexactly(length), dropped


async def serve(reader: asyncio.StreamReader) -> None:
    """Deliver the events read from `reader` until it ends, then give the queued ones their grace."""
    body, _ = await _read_frame(reader)
    told: dict[str, Any] = json.loads(body)
    logs.configure(told["log_level"])
    fields = told["settings"]
    settings = WebhookSettings(**{**fields, "urls": tuple(fields["urls"])})
    delivery = Delivery(settings, told["secret"])
    await delivery.start()
    try:
        while True:
            try:
                body, dropped = await _read_frame(reader)
            except asyncio.IncompleteReadError:
                # The server closed the pipe: it is shutting down (or gone). What is queued (the rooms its
                # shutdown closed, for one) must go out within the grace, on a CPU others may keep busy:
                # back to the normal policy at the lowest priority, where the system allows it (root, or
                # an RLIMIT_NICE that permits it).
                with contextlib.suppress(OSError, AttributeError):
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                    os.setpriority(os.PRIO_PROCESS, 0, 19)
                return
            if dropped:
                delivery.count_dropped(dropped)
            delivery.put(WebhookEvent.FromString(body))
    finally:
        await delivery.stop()


async def _serve_stdin() -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    await serve(reader)


def main() -> None:
    # Only the server ends this, by closing the pipe: a SIGTERM sent to every process of the service
    # (systemd's default) or a Ctrl-C must leave the events of its shutdown the time to go out.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    # The lowest priority there is: any other process that wants this CPU takes it at once (a nice value
    # does not give that: the scheduler lets the running process finish its slice first).
    with contextlib.suppress(OSError, AttributeError):  # SCHED_IDLE is Linux's
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve_stdin())


if __name__ == "__main__":
    main()
