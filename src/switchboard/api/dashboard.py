"""`/dashboard`: one page for operators — rooms with their participants and tracks, workers (drain,
undrain), every dispatch's jobs with where they are and why, and actions on them — kept current live.

The page is static and ships in the package (`dashboard_page.py`: no build step). It logs in once: the API
key and secret go to `POST /dashboard/login`, which answers with a short-lived session token (roomList,
and roomAdmin with no room restriction) that the page keeps in memory only; the secret is never sent
back, and the page never stores it. Every call the page makes is an ordinary authenticated API call:

- reading rooms, workers and explanations: LiveKit's and Switchboard's Twirp APIs with the session token;
- acting on one room (its participants, dispatches, closing it): LiveKit's RoomService and
  AgentDispatchService, which require `roomAdmin` with a `room` grant naming exactly that room (and
  `roomCreate` to delete a room). The page exchanges its session token for such a token, for one room and
  a few minutes, at `POST /dashboard/room-token`; LiveKit's rules stay untouched;
- the charts of the last hour: `GET /dashboard/activity` (`activity.py`), and what LiveKit's API does not
  say of a room, each job's timeline and who is speaking: `GET /dashboard/room?room=NAME`, with the
  session token;
- live updates: `GET /dashboard/events`, a server-sent event stream of what the engine decided (rooms,
  participants, tracks, dispatches, jobs) and, looked for every half second while a page listens, a
  change of who is speaking. The page reads it with `fetch` so that the token travels in
  the Authorization header, never in a URL; each event makes the page read the state again (coalesced).

On a node of a cluster, the page shows every node: `dashboard_nodes.py` says how its node asks the others.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jwt
from aiohttp import web

from switchboard.api.activity import Activity, combined
from switchboard.api.dashboard_nodes import WORKER_CALLS, DashboardNodes
from switchboard.api.dashboard_page import PAGE
from switchboard.auth.grants import Claims, InvalidToken, PermissionDenied, VideoGrant, require_server_admin
from switchboard.auth.tokens import TokenVerifier, bearer_token, mint_token
from switchboard.cluster.forwarding import FORWARDED
from switchboard.core.dispatch import Dispatch
from switchboard.core.errors import Unavailable
from switchboard.core.events import (
    AssignJob,
    DispatchCreated,
    JobChanged,
    JobEnded,
    JobStarted,
    OfferJob,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomStarted,
    TrackPublished,
    TrackUnpublished,
)
from switchboard.core.jobs import Job
from switchboard.rtc.speakers import RoomView, speaker_level
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.api")

SESSION_TTL = 3600.0
"""How long a dashboard login lasts; the page asks to log in again after it."""
ROOM_TOKEN_TTL = 300.0
"""How long a token for one room's actions lasts; the page asks for a new one before it expires."""
MAX_LOGIN_BODY = 4096
STREAM_BACKLOG = 1000
"""Events queued for one slow page before newer ones are dropped: each event only tells the page to read
the state again, so the events still queued bring it up to date."""
SPEAKERS_INTERVAL = 0.5
"""How often, while a page listens, the rooms' speakers are compared with the last look."""
KEEPALIVE = 15.0
"""A comment on an idle stream, so that proxies and the browser keep it open."""

EVENT_KINDS: dict[type[Any], str] = {
    RoomStarted: "room_started",
    RoomClosed: "room_finished",
    ParticipantJoined: "participant_joined",
    ParticipantLeft: "participant_left",
    TrackPublished: "track_published",
    TrackUnpublished: "track_unpublished",
    DispatchCreated: "dispatch_created",
    OfferJob: "job_offered",
    AssignJob: "job_assigned",
    JobStarted: "job_started",
    JobChanged: "job_changed",
    JobEnded: "job_ended",
}


def _room_of(decision: Any) -> str:
    job = getattr(decision, "job", None)
    return job.room if job is not None else str(decision.room)


class Dashboard:
    def __init__(
        self,
        runtime: Runtime,
        verifier: TokenVerifier,
        keys: Mapping[str, str],
        rooms: Mapping[str, RoomView],
        node_id: str,
        nodes: DashboardNodes | None = None,
        session_ttl: float = SESSION_TTL,
    ) -> None:
        """`rooms`: the media rooms, read only, for who is speaking. `nodes`: the other nodes, on a node of
        a cluster."""
        self._runtime = runtime
        self._node_id = node_id
        self._nodes = nodes
        self._verifier = verifier
        self._keys = keys
        self._session_ttl = session_ttl
        self._streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.minutes = Activity()
        """The last hour's dispatches, waits and failures (fed by `effects.py`)."""
        self._rooms = rooms
        self._speakers_watch: asyncio.Task[None] | None = None

    def install(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self.page)
        app.router.add_post("/dashboard/login", self.login)
        app.router.add_post("/dashboard/room-token", self.room_token)
        app.router.add_get("/dashboard/events", self.events)
        app.router.add_get("/dashboard/activity", self.activity)
        app.router.add_get("/dashboard/room", self.room)
        app.router.add_post("/dashboard/node/{node_id}" + WORKER_CALLS + "{method}", self.on_node)
        app.on_shutdown.append(self._end_streams)
        if self._nodes is not None:
            nodes = self._nodes
            app.on_cleanup.append(lambda _: nodes.close())

    def publish(self, decision: Any) -> None:
        """An engine decision the pages show (`EVENT_KINDS`): sent to every open event stream."""
        if self._streams:
            kind = EVENT_KINDS[type(decision)]
            self._publish({"kind": kind, "room": _room_of(decision), "at": time.time()})

    def _publish(self, event: dict[str, Any] | None) -> None:
        for queue in self._streams:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def _end_streams(self, _: web.Application) -> None:
        self._publish(None)
        if self._speakers_watch is not None:
            self._speakers_watch.cancel()

    def _speaking(self, room: str) -> dict[str, float]:
        """The sids of the room's participants speaking now, with their levels."""
        present = self._rooms.get(room)
        if present is None:
            return {}
        now = time.monotonic()
        speakers = [*present.sessions.values(), *present.forwards.values()]
        return {
            speaker.sid: level
            for speaker in speakers
            if not speaker.closed
            and not speaker.hidden
            and (level := speaker_level(speaker, now)) is not None
        }

    async def _watch_speakers(self) -> None:
        """Who speaks changes without an engine decision: while a page listens, look for it here."""
        told: dict[str, frozenset[str]] = {}
        try:
            while self._streams:
                await asyncio.sleep(SPEAKERS_INTERVAL)
                speaking = {room: frozenset(self._speaking(room)) for room in list(self._rooms)}
                for room in speaking.keys() | told.keys():
                    if speaking.get(room, frozenset()) != told.get(room, frozenset()):
                        self._publish({"kind": "speakers_changed", "room": room, "at": time.time()})
                told = speaking
        except Exception:  # a bug here must be seen, and must not end the streams
            log.exception("dashboard speaker watch failed")

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                # Everything is inline and same-origin: nothing else may load or be framed.
                "Content-Security-Policy": (
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def login(self, request: web.Request) -> web.Response:
        """Exchange an API key and secret for a dashboard session token."""
        body = await _small_json(request)
        if body is None:
            return _refusal(400, "send JSON with api_key and api_secret")
        api_key, api_secret = body.get("api_key"), body.get("api_secret")
        if api_key is None or api_secret is None:
            return _refusal(400, "send JSON with api_key and api_secret")
        if not isinstance(api_key, str) or not isinstance(api_secret, str):
            return _refusal(400, "api_key and api_secret must be strings")
        known = self._keys.get(api_key)
        # Compared in constant time, and a wrong key costs the same as a wrong secret.
        if not hmac.compare_digest((known or "\0").encode(), api_secret.encode()) or known is None:
            log.info("dashboard login refused peer=%s", request.remote)
            return _refusal(401, "unknown API key or wrong secret")
        video = VideoGrant(room_list=True, room_admin=True)
        token = mint_token(api_key, known, video=video, identity="dashboard", ttl=self._session_ttl)
        log.info("dashboard login peer=%s api_key=%s", request.remote, api_key)
        # The node's id tells the page which of the nodes it lists serves it.
        return web.json_response({"token": token, "expires_in": self._session_ttl, "node_id": self._node_id})

    def _session(self, request: web.Request) -> tuple[Claims, float] | web.Response:
        """The claims of the session token the request carries in its Authorization header, and when it
        expires, or the refusal to answer. Only a token that may administer every room opens the stream
        or gets a room's token."""
        try:
            token = bearer_token(request.headers, {})
            if token is None:
                raise InvalidToken("missing access token: send 'Authorization: Bearer <token>'")
            claims = self._verifier.verify(token)
            require_server_admin(claims)
        except InvalidToken as exc:
            return _refusal(401, str(exc))
        except PermissionDenied as exc:
            return _refusal(403, str(exc))
        expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
        return claims, expires_at

    async def room_token(self, request: web.Request) -> web.Response:
        """A token for LiveKit's per-room calls on one room: roomAdmin and roomCreate, room = that room."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        claims, _ = session
        body = await _small_json(request)
        room = body.get("room") if body is not None else None
        if not isinstance(room, str) or not room:
            return _refusal(400, "send JSON with the room's name")
        secret = self._verifier.secret(claims.api_key)
        assert secret is not None  # the token verified with it
        video = VideoGrant(room=room, room_admin=True, room_create=True)
        token = mint_token(claims.api_key, secret, video=video, identity="dashboard", ttl=ROOM_TOKEN_TTL)
        return web.json_response({"token": token, "expires_in": ROOM_TOKEN_TTL})

    async def activity(self, request: web.Request) -> web.Response:
        """The last hour, minute by minute: dispatches, failures, wait to running (average, longest); on a
        cluster, of every node."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        minutes = self.minutes.last_hour()
        if self._nodes is not None:
            try:
                others = await self._nodes.gather(request, request.path)
            except Unavailable as exc:
                return _refusal(503, str(exc))
            minutes = combined(minutes, (answer["minutes"] for answer in others))
        return web.json_response({"minutes": minutes})

    async def room(self, request: web.Request) -> web.Response:
        """Each job of the room's dispatches with what happened to it, when (Unix seconds), oldest first;
        and the sids of the participants speaking now, with their levels."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        room = request.query.get("room", "")
        if not room:
            return _refusal(400, "name the room: ?room=NAME")
        if self._nodes is not None:  # a room of another node: its node answers
            try:
                node = await self._nodes.room_node(request, room)
                if node is not None:
                    return await self._nodes.forward(request, node, request.path)
            except Unavailable as exc:
                return _refusal(503, str(exc))
        now = self._runtime.now()
        if self._runtime.engine.find_room(room, now) is None:
            return _refusal(404, "requested room does not exist")
        dispatches = self._runtime.engine.list_dispatches(room, "", now)
        jobs = [
            {"dispatch_id": dispatch.id, "job_id": job.id, "events": _timeline(dispatch, job)}
            for dispatch in dispatches
            for job in dispatch.jobs
        ]
        return web.json_response({"room": room, "jobs": jobs, "speaking": self._speaking(room)})

    async def on_node(self, request: web.Request) -> web.Response:
        """A WorkerService call answered by the node named in the path (a worker's jobs and its drain are
        its own node's), as that node answers it; the page's own node answers at /twirp/ itself."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        node_id = request.match_info["node_id"]
        unknown = _refusal(404, f"no other live node has the id {node_id!r}")
        if self._nodes is None or node_id == self._node_id:
            return unknown
        try:
            node = await self._nodes.node(node_id)
            if node is None:
                return unknown
            return await self._nodes.forward(request, node, WORKER_CALLS + request.match_info["method"])
        except Unavailable as exc:
            return _refusal(503, str(exc))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events, one per engine decision the page shows, until the session expires."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        _, expires_at = session
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(STREAM_BACKLOG)
        self._streams.add(queue)
        if self._speakers_watch is None or self._speakers_watch.done():
            self._speakers_watch = asyncio.get_running_loop().create_task(self._watch_speakers())
        others = None
        if self._nodes is not None and FORWARDED not in request.headers:  # a page's own stream, not a node's

            def put(event: dict[str, Any]) -> None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)

            others = asyncio.create_task(self._nodes.follow(request, put))
        try:
            # The page reads the state when the stream opens: nothing before it is missed.
            await response.write(_message({"kind": "connected", "room": "", "at": time.time()}))
            while (left := expires_at - time.time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), min(KEEPALIVE, left))
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if event is None:
                    break
                await response.write(_message(event))
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._streams.discard(queue)
            if others is not None:
                others.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await others
        return response


def _timeline(dispatch: Dispatch, job: Job) -> list[dict[str, Any]]:
    """Created, each earlier attempt's start and end (with its reason), then the current attempt: offered,
    running, ended (with its reason). The job keeps no assignment time, so assignment is not on it."""
    events: list[tuple[float, str]] = [(dispatch.created_at, "dispatch created")]
    for attempt in job.attempts:
        if attempt.started_at is not None:
            events.append((attempt.started_at, f"attempt {attempt.number} running on {attempt.worker_id}"))
        events.append((attempt.ended_at, f"attempt {attempt.number} ended: {attempt.error}"))
    if job.offered_at and job.worker_id:
        events.append((job.offered_at, f"offered to {job.worker_id}"))
    if job.started_at is not None:
        events.append((job.started_at, f"running on {job.worker_id}"))
    if job.ended_at is not None:
        ending = job.status.value + (f": {job.error}" if job.error else "")
        events.append((job.ended_at, ending))
    return [{"at": at, "what": what} for at, what in sorted(events, key=lambda event: event[0])]


def _message(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def _small_json(request: web.Request) -> dict[str, Any] | None:
    if request.content_length is None or request.content_length > MAX_LOGIN_BODY:
        return None
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _refusal(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
