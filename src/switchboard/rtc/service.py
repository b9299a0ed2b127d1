"""`/rtc`: participants join rooms with the LiveKit client SDKs (signalling protocol v0).

The SDKs try the single-connection `/rtc/v1` first; a 404 there (and on `/rtc/v1/validate`, which the
browser SDK fetches) makes them fall back to `/rtc`. Tokens are checked before the upgrade, so a bad token
is a plain HTTP error whose text the SDKs show (they fetch `/rtc/validate` for it).
"""

import contextlib
import logging
from dataclasses import replace

from aiohttp import web
from livekit.protocol import models, rtc

from switchboard.auth.grants import Claims, InvalidToken
from switchboard.auth.tokens import TokenVerifier, mint_token
from switchboard.core import ids
from switchboard.core.errors import CoreError, FailedPrecondition, NotFound, ResourceExhausted
from switchboard.core.events import (
    DisconnectCause,
    DisconnectParticipant,
    ParticipantUpdated,
    SendData,
    TrackMuted,
)
from switchboard.core.rooms import AGENT, STANDARD, Participant
from switchboard.rtc.forward import Forward
from switchboard.rtc.network import configure_ice
from switchboard.rtc.participant import ParticipantSession
from switchboard.rtc.room import Room
from switchboard.rtc.settings import RtcSettings
from switchboard.rtc.speakers import ActiveSpeakers
from switchboard.runtime import Runtime
from switchboard.wire import room_spec_from_token, room_to_proto

log = logging.getLogger("switchboard.rtc")

_DISCONNECT_REASONS = {
    DisconnectCause.DUPLICATE_IDENTITY: models.DUPLICATE_IDENTITY,
    DisconnectCause.REMOVED: models.PARTICIPANT_REMOVED,
    DisconnectCause.ROOM_DELETED: models.ROOM_DELETED,
    DisconnectCause.ROOM_CLOSED: models.ROOM_CLOSED,
    DisconnectCause.JOB_ENDED: models.PARTICIPANT_REMOVED,
}
_V1_MISSING = "this server speaks signalling protocol v0 at /rtc\n"


class RtcService:
    """The `/rtc` entry point, and the carrier of the engine's decisions about connected participants."""

    def __init__(
        self, runtime: Runtime, verifier: TokenVerifier, settings: RtcSettings, server_info: models.ServerInfo
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.server_info = server_info
        self.rooms: dict[str, Room] = {}
        """Rooms with connected or forwarded participants, by name."""
        self.speakers = ActiveSpeakers(settings.audio, self.rooms)
        self._verifier = verifier
        self.ports = configure_ice(settings)
        """The UDP ports media may use (rtc.port_range_*); None: any."""

    def install(self, app: web.Application) -> None:
        app.router.add_get("/rtc", self.connect)
        app.router.add_get("/rtc/validate", self.validate)
        app.router.add_get("/rtc/v1", self.v1_missing)
        app.router.add_get("/rtc/v1/validate", self.v1_missing)

    async def v1_missing(self, _: web.Request) -> web.Response:
        return web.Response(status=404, text=_V1_MISSING)

    def authorize(self, request: web.Request) -> tuple[Claims, str]:
        """The joining participant's claims and room, or an HTTP error the SDKs show to the user."""
        try:
            claims = self._verifier.verify_request(request.headers, request.query)
        except InvalidToken as exc:
            raise web.HTTPUnauthorized(text=f"{exc}\n") from exc
        room = claims.video.room or request.query.get("room", "")
        if not claims.video.room_join:
            raise web.HTTPUnauthorized(text="permissions denied: the token lacks the roomJoin grant\n")
        if not room:
            raise web.HTTPBadRequest(text="the token grants no room to join\n")
        if not claims.identity:
            raise web.HTTPBadRequest(text="identity cannot be empty\n")
        if self.ports is not None and not self.ports.available():
            raise web.HTTPServiceUnavailable(text=f"cannot join: {self.ports}\n")
        return claims, room

    async def validate(self, request: web.Request) -> web.Response:
        claims, room = self.authorize(request)
        try:
            self.runtime.engine.check_agent_job(room, claims.job)
        except FailedPrecondition as exc:
            raise web.HTTPForbidden(text=f"{exc}\n") from exc
        return web.Response(text="success")

    async def connect(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.settings.ping_timeout, max_msg_size=self.settings.max_message_size
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="/rtc expects a WebSocket upgrade\n")
        claims, room_name = self.authorize(request)
        query = request.query
        if query.get("reconnect") in ("1", "true"):
            return await self._resume(request, ws, claims, room_name)
        now = self.runtime.now()
        participant = Participant(
            identity=claims.identity,
            sid=ids.new_id(ids.PARTICIPANT),
            joined_at=now,
            name=claims.name,
            kind=AGENT if claims.video.agent else (claims.kind or STANDARD),
            metadata=claims.metadata,
            attributes=dict(claims.attributes),
            recorder=claims.video.recorder,
            hidden=claims.video.hidden,
            job=claims.job,
        )
        runtime = self.runtime
        spec = room_spec_from_token(room_name, claims.room_config)
        try:
            # Its decisions close a previous connection of the same identity and launch jobs.
            room_state = runtime.call(lambda engine: engine.join(spec, participant, now))
        except (ResourceExhausted, FailedPrecondition) as exc:
            raise web.HTTPForbidden(text=f"{exc}\n") from exc
        except CoreError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        try:
            await ws.prepare(request)
        except Exception:
            runtime.call(
                lambda engine: engine.participant_left(
                    room_name, participant.identity, runtime.now(), sid=participant.sid
                )
            )
            raise
        room = self._room(room_name)
        session = ParticipantSession(
            room,
            ws,
            request.transport,
            participant,
            claims,
            client_protocol=_int(query.get("client_protocol")),
            auto_subscribe=query.get("auto_subscribe", "1") not in ("0", "false"),
            # LiveKit's rule: Rust SDKs before protocol 10 cannot decode `track_subscribed`.
            reports_subscriptions=not (query.get("sdk") == "rust" and _int(query.get("protocol")) < 10),
        )
        room.add(session)
        log.info(
            "participant joined room=%s identity=%s sid=%s kind=%s sdk=%s",
            room_name,
            participant.identity,
            participant.sid,
            participant.kind,
            query.get("sdk", ""),
        )
        await session.run(room_to_proto(room_state))
        return ws

    async def _resume(
        self, request: web.Request, ws: web.WebSocketResponse, claims: Claims, room_name: str
    ) -> web.WebSocketResponse:
        """A client resuming its session after its signal connection dropped (`reconnect=1&sid=PA_…`)."""
        session = self._session(room_name, claims.identity)
        sid = request.query.get("sid", "")
        await ws.prepare(request)
        if session is None or session.closed or sid != session.sid:
            # As LiveKit: the session is gone (the window passed, or another connection took the
            # identity), so the client is asked to join again; the SDKs then do a full reconnect.
            log.info("resume refused room=%s identity=%s sid=%s", room_name, claims.identity, sid)
            leave = rtc.LeaveRequest(
                can_reconnect=True, action=rtc.LeaveRequest.RECONNECT, reason=models.STATE_MISMATCH
            )
            await ws.send_bytes(rtc.SignalResponse(leave=leave).SerializeToString())
            await ws.close()
            return ws
        await session.resume(ws, request.transport, request.query.get("reconnect_reason", ""))
        return ws

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(
                name, self.runtime, self.settings, self.server_info, self._forget, self.speakers, self.ports
            )
        return room

    def _forget(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    def _session(self, room: str, identity: str) -> ParticipantSession | None:
        found = self.rooms.get(room)
        return found.session(identity) if found is not None else None

    # What RoomService asks of live participants

    def live(self, room: str, identity: str) -> ParticipantSession:
        found = self.rooms.get(room)
        if found is None:
            raise NotFound("participant does not exist")
        return found.live(identity)

    def update_subscriptions(self, room: str, identity: str, update: rtc.UpdateSubscription) -> None:
        """As if the participant had sent this subscription request itself."""
        self.live(room, identity).apply_subscription(update)

    async def perform_rpc(self, room: str, identity: str, method: str, payload: str, timeout_ms: int) -> str:
        return await self.live(room, identity).call(method, payload, timeout_ms)

    def forward_participant(self, room: str, identity: str, destination: str) -> None:
        """Show a connected participant, with its tracks, in another room too (ForwardParticipant)."""
        session = self.live(room, identity)
        engine, now = self.runtime.engine, self.runtime.now()
        source = engine.participant(room, identity)
        copy = Participant(
            identity=identity,
            sid=ids.new_id(ids.PARTICIPANT),
            joined_at=now,
            name=source.name,
            kind=source.kind,
            metadata=source.metadata,
            attributes=dict(source.attributes),
            tracks=source.tracks,  # the same tracks, kept in step
            active=source.active,
            forwarded=True,
        )
        self.runtime.call(lambda engine: engine.participant_joined(destination, copy, now))
        forward = Forward(session, self._room(destination), copy.sid)
        session.forwards.append(forward)
        forward.room.add_forward(forward)
        log.info("participant forwarded room=%s identity=%s destination=%s", room, identity, destination)

    def move_participant(self, room: str, identity: str, destination: str) -> None:
        """Take a connected participant, with its tracks, into another room on its own connection
        (RoomService.MoveParticipant). As LiveKit: the old room sees it leave, the new one sees it join,
        and the participant gets `room_moved` (the new room, a token for it, the others there)."""
        session = self.live(room, identity)
        engine, now = self.runtime.engine, self.runtime.now()
        participant = engine.participant(room, identity)
        # NotFound, ResourceExhausted: unmoved
        self.runtime.call(lambda engine: engine.participant_joined(destination, participant, now))
        session.end_forwards(models.PARTICIPANT_REMOVED)
        self.runtime.call(lambda engine: engine.participant_left(room, identity, now, sid=session.sid))

        old = session.room
        before = old.others(session)
        for other in before:
            for relay in session.relays.values():
                other.unsubscribe(relay)
                other.forget_track(relay.track_sid)
            for relay in other.relays.values():
                session.unsubscribe(relay)
                session.forget_track(relay.track_sid)
        session.drop_deferred()
        if not session.hidden:
            old.announce([session.farewell(models.PARTICIPANT_REMOVED)], exclude=session)
        gone = [other.farewell(models.PARTICIPANT_REMOVED) for other in before if not other.hidden]
        if gone:  # the SDKs drop the old room's participants on this, not on room_moved
            session.signal.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=gone)))

        new = self._room(destination)
        old.remove(session)
        session.room = new
        new.add(session)
        after = new.others(session)
        moved = rtc.RoomMovedResponse(
            room=room_to_proto(engine.room(destination)),
            token=self._token_for(session, destination),
            participant=session.info(),
            other_participants=[other.info() for other in after if not other.hidden],
        )
        session.signal.send(rtc.SignalResponse(room_moved=moved))
        if not session.hidden:
            new.announce([session.info()], exclude=session)
        session.subscribe_to([(other, relay) for other in after for relay in other.relays.values()])
        new.subscribe_all(session)
        log.info("participant moved room=%s identity=%s destination=%s", room, identity, destination)

    def _token_for(self, session: ParticipantSession, room: str) -> str:
        """A token like the participant's own, for `room` (what it reconnects with after a move)."""
        claims, participant = session.claims, session.participant()
        return mint_token(
            claims.api_key,
            self._verifier.secret(claims.api_key) or "",
            video=replace(claims.video, room=room, destination_room=""),
            identity=participant.identity,
            name=participant.name,
            kind=claims.kind,
            metadata=participant.metadata,
            attributes=participant.attributes,
        )

    # The engine's decisions (wired in switchboard.effects)

    def disconnect(self, decision: DisconnectParticipant) -> None:
        room = self.rooms.get(decision.room)
        if room is None:
            return
        session = room.session(decision.identity)
        if session is not None and session.sid == decision.sid and not session.closed:
            session.disconnect(_DISCONNECT_REASONS[decision.cause])
        forward = room.forwards.get(decision.identity)
        if forward is not None and forward.sid == decision.sid:  # removed from the destination room
            room.end_forward(forward, _DISCONNECT_REASONS[decision.cause], in_engine=False)

    def participant_updated(self, decision: ParticipantUpdated) -> None:
        session = self._session(decision.room, decision.identity)
        if session is None:
            return
        if not session.hidden:
            session.room.announce([session.info()])
        self._update_forwards(session)

    def _update_forwards(self, session: ParticipantSession) -> None:
        """Changes to the source show in the rooms it is forwarded to (and in their RoomService views)."""
        source = session.participant()
        for forward in session.forwards:
            if forward.ended:
                continue
            with contextlib.suppress(NotFound):
                copy = self.runtime.engine.participant(forward.room.name, forward.identity)
                copy.name, copy.metadata = source.name, source.metadata
                copy.attributes = dict(source.attributes)
            if not forward.hidden:
                forward.room.announce([forward.info()])

    def track_muted(self, decision: TrackMuted) -> None:
        session = self._session(decision.room, decision.identity)
        if session is None:
            return
        if decision.by_server:
            # As LiveKit: only a mute the publisher did not ask for is sent to it. Told of its own, the
            # Rust-based SDKs mute (or unmute) again and ask again, in a loop (thousands a second).
            mute = rtc.MuteTrackRequest(sid=decision.track_sid, muted=decision.muted)
            session.signal.send(rtc.SignalResponse(mute=mute))
        if not session.hidden:
            session.room.announce([session.info()])
        self._update_forwards(session)

    def send_data(self, decision: SendData) -> None:
        room = self.rooms.get(decision.room)
        if room is not None:
            room.deliver(decision.packet, decision.reliable, decision.destinations)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
