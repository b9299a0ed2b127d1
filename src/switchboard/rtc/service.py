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
from switchboard.rtc.relay import AudioRelay, Publisher
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
    def __init__(
        self, runtime: Runtime, verifier: TokenVerifier, settings: RtcSettings, server_info: models.ServerInfo
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.server_info = server_info
        self.sessions: dict[str, dict[str, ParticipantSession]] = {}
        """Connected participants, by room and identity."""
        self.forwards: dict[str, dict[str, Forward]] = {}
        """Participants forwarded into rooms (ForwardParticipant), by destination room and identity."""
        self.speakers = ActiveSpeakers(settings.audio, self)
        self._verifier = verifier
        self.ports = configure_ice(settings)
        """The UDP ports media may use (rtc.port_range_*); None: any."""
        runtime.on(DisconnectParticipant, self._on_disconnect)
        runtime.on(ParticipantUpdated, self._on_participant_updated)
        runtime.on(TrackMuted, self._on_track_muted)
        runtime.on(SendData, self._on_send_data)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/rtc", self.connect)
        app.router.add_get("/rtc/validate", self.validate)
        app.router.add_get("/rtc/v1", self.v1_missing)
        app.router.add_get("/rtc/v1/validate", self.v1_missing)

    async def v1_missing(self, _: web.Request) -> web.Response:
        return web.Response(status=404, text=_V1_MISSING)

    def _authorize(self, request: web.Request) -> tuple[Claims, str]:
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
        claims, room = self._authorize(request)
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
        claims, room_name = self._authorize(request)
        query = request.query
        if query.get("reconnect") in ("1", "true"):
            # Resuming a lost session is not supported: ask the client for a full rejoin.
            await ws.prepare(request)
            leave = rtc.LeaveRequest(
                can_reconnect=True, action=rtc.LeaveRequest.RECONNECT, reason=models.STATE_MISMATCH
            )
            await ws.send_bytes(rtc.SignalResponse(leave=leave).SerializeToString())
            await ws.close()
            return ws
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
        engine = self.runtime.engine
        try:
            room = engine.join(room_spec_from_token(room_name, claims.room_config), participant, now)
        except (ResourceExhausted, FailedPrecondition) as exc:
            self.runtime.flush()
            raise web.HTTPForbidden(text=f"{exc}\n") from exc
        except CoreError as exc:
            self.runtime.flush()
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        self.runtime.flush()  # closes a previous connection of the same identity, launches jobs
        others = [s for s in self.sessions.get(room_name, {}).values() if not s.closed]
        try:
            await ws.prepare(request)
        except Exception:
            engine.participant_left(room_name, participant.identity, self.runtime.now(), sid=participant.sid)
            self.runtime.flush()
            raise
        session = ParticipantSession(
            self,
            ws,
            room_name,
            participant,
            claims,
            client_protocol=_int(query.get("client_protocol")),
            auto_subscribe=query.get("auto_subscribe", "1") not in ("0", "false"),
            # LiveKit's rule: Rust SDKs before protocol 10 cannot decode `track_subscribed`.
            reports_subscriptions=not (query.get("sdk") == "rust" and _int(query.get("protocol")) < 10),
        )
        self.sessions.setdefault(room_name, {})[participant.identity] = session
        self.speakers.watch(room_name)
        log.info(
            "participant joined room=%s identity=%s sid=%s kind=%s sdk=%s",
            room_name,
            participant.identity,
            participant.sid,
            participant.kind,
            query.get("sdk", ""),
        )
        await session.run(room_to_proto(room), others, list(self.forwards.get(room_name, {}).values()))
        return ws

    # Room-wide operations, used by the sessions

    def broadcast(
        self, room: str, participants: list[models.ParticipantInfo], exclude: ParticipantSession | None = None
    ) -> None:
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=participants))
        for session in self.sessions.get(room, {}).values():
            if session is not exclude and not session.closed:
                session.signal.send(update)

    def published(self, publisher: ParticipantSession, relay: AudioRelay) -> None:
        """A new track: everyone learns of it before any subscriber offer carrying it."""
        for room, as_seen in self._appearances(publisher):
            self.broadcast(room, [as_seen.info()])
            for session in self.sessions.get(room, {}).values():
                if session is not publisher and not session.closed:
                    session.subscribe(as_seen, relay)

    def published_track(self, room: str, track_sid: str) -> tuple[Publisher, AudioRelay] | None:
        publishers: list[Publisher] = [*self.sessions.get(room, {}).values()]
        publishers += self.forwards.get(room, {}).values()
        for publisher in publishers:
            relay = publisher.relays.get(track_sid)
            if relay is not None and not publisher.closed:
                return publisher, relay
        return None

    def unpublished(self, publisher: ParticipantSession, relay: AudioRelay) -> None:
        for room, _ in self._appearances(publisher):
            for session in self.sessions.get(room, {}).values():
                if session is not publisher:
                    session.unsubscribe(relay)
                    session.forget_track(relay.track_sid)  # track sids are never reused
        relay.close()

    def permissions_changed(self, publisher: ParticipantSession) -> None:
        """The publisher changed who may receive its tracks: each other participant gains or loses them."""
        for room, as_seen in self._appearances(publisher):
            for session in list(self.sessions.get(room, {}).values()):
                if session is not publisher and not session.closed:
                    for relay in list(publisher.relays.values()):
                        session.recheck_permission(as_seen, relay)

    def _forwards_of(self, session: ParticipantSession) -> list[Forward]:
        return [f for room in self.forwards.values() for f in room.values() if f.source is session]

    def _appearances(self, session: ParticipantSession) -> list[tuple[str, ParticipantSession | Forward]]:
        """The rooms the participant's tracks are in, and as whom: its own, and those it is forwarded to."""
        return [(session.room, session), *((f.room, f) for f in self._forwards_of(session))]

    # Forwarded participants

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
        engine.participant_joined(destination, copy, now)
        self.runtime.flush()
        forward = Forward(session, destination, copy.sid)
        self.forwards.setdefault(destination, {})[identity] = forward
        if not forward.hidden:
            self.broadcast(destination, [forward.info()])
        for other in list(self.sessions.get(destination, {}).values()):
            if not other.closed:
                for relay in list(forward.relays.values()):
                    other.subscribe(forward, relay)
        log.info("participant forwarded room=%s identity=%s destination=%s", room, identity, destination)

    def end_forwards(self, session: ParticipantSession, reason: int) -> None:
        """The source left (or moved): its forwards leave their rooms too."""
        for forward in self._forwards_of(session):
            self._end_forward(forward, reason, in_engine=True)

    def _end_forward(self, forward: Forward, reason: int, *, in_engine: bool) -> None:
        if forward.ended:
            return
        forward.ended = True
        room = self.forwards.get(forward.room, {})
        if room.get(forward.identity) is forward:
            del room[forward.identity]
            if not room:
                del self.forwards[forward.room]
        for other in list(self.sessions.get(forward.room, {}).values()):
            for relay in list(forward.source.relays.values()):
                other.unsubscribe(relay)
                other.forget_track(relay.track_sid)
        if not forward.hidden:
            self.broadcast(forward.room, [forward.farewell(reason)])
        if in_engine:
            with contextlib.suppress(NotFound):
                self.runtime.engine.participant_left(
                    forward.room, forward.identity, self.runtime.now(), sid=forward.sid
                )
            self.runtime.flush()
        log.info("forward ended room=%s identity=%s", forward.room, forward.identity)

    def deliver(
        self,
        room: str,
        payload: bytes,
        reliable: bool,
        destinations: frozenset[str],
        sender: ParticipantSession | None = None,
    ) -> None:
        for session in self.sessions.get(room, {}).values():
            if session is sender or session.closed:
                continue
            if destinations and session.identity not in destinations:
                continue
            session.send_data(payload, reliable)

    def forget(self, session: ParticipantSession) -> None:
        room = self.sessions.get(session.room, {})
        if room.get(session.identity) is session:
            del room[session.identity]
            if not room:
                del self.sessions[session.room]

    # What RoomService asks of live participants

    def live(self, room: str, identity: str) -> ParticipantSession:
        session = self._session(room, identity)
        if session is None or session.closed:
            raise NotFound("participant does not exist")
        return session

    def update_subscriptions(self, room: str, identity: str, update: rtc.UpdateSubscription) -> None:
        """As if the participant had sent this subscription request itself."""
        self.live(room, identity).apply_subscription(update)

    async def perform_rpc(self, room: str, identity: str, method: str, payload: str, timeout_ms: int) -> str:
        return await self.live(room, identity).call(method, payload, timeout_ms)

    def move_participant(self, room: str, identity: str, destination: str) -> None:
        """Take a connected participant, with its tracks, into another room on its own connection
        (RoomService.MoveParticipant). As LiveKit: the old room sees it leave, the new one sees it join,
        and the participant gets `room_moved` (the new room, a token for it, the others there)."""
        session = self.live(room, identity)
        engine, now = self.runtime.engine, self.runtime.now()
        participant = engine.participant(room, identity)
        engine.participant_joined(destination, participant, now)  # NotFound, ResourceExhausted: unmoved
        self.end_forwards(session, models.PARTICIPANT_REMOVED)
        engine.participant_left(room, identity, now, sid=session.sid)
        self.runtime.flush()

        before = [s for s in self.sessions.get(room, {}).values() if s is not session and not s.closed]
        for other in before:
            for relay in session.relays.values():
                other.unsubscribe(relay)
                other.forget_track(relay.track_sid)
            for relay in other.relays.values():
                session.unsubscribe(relay)
                session.forget_track(relay.track_sid)
        session.drop_deferred()
        if not session.hidden:
            self.broadcast(room, [session.farewell(models.PARTICIPANT_REMOVED)], exclude=session)
        gone = [other.farewell(models.PARTICIPANT_REMOVED) for other in before if not other.hidden]
        if gone:  # the SDKs drop the old room's participants on this, not on room_moved
            session.signal.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=gone)))

        self.forget(session)
        session.room = destination
        self.sessions.setdefault(destination, {})[identity] = session
        self.speakers.watch(destination)
        after = [s for s in self.sessions[destination].values() if s is not session and not s.closed]
        moved = rtc.RoomMovedResponse(
            room=room_to_proto(engine.room(destination)),
            token=self._token_for(session, destination),
            participant=session.info(),
            other_participants=[other.info() for other in after if not other.hidden],
        )
        session.signal.send(rtc.SignalResponse(room_moved=moved))
        if not session.hidden:
            self.broadcast(destination, [session.info()], exclude=session)
        for other in after:
            for relay in other.relays.values():
                session.subscribe(other, relay)
            for relay in session.relays.values():
                other.subscribe(session, relay)
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

    # Decisions from the engine

    def _session(self, room: str, identity: str) -> ParticipantSession | None:
        return self.sessions.get(room, {}).get(identity)

    def _on_disconnect(self, decision: DisconnectParticipant) -> None:
        session = self._session(decision.room, decision.identity)
        if session is not None and session.sid == decision.sid and not session.closed:
            session.disconnect(_DISCONNECT_REASONS[decision.cause])
        forward = self.forwards.get(decision.room, {}).get(decision.identity)
        if forward is not None and forward.sid == decision.sid:  # removed from the destination room
            self._end_forward(forward, _DISCONNECT_REASONS[decision.cause], in_engine=False)

    def _on_participant_updated(self, decision: ParticipantUpdated) -> None:
        session = self._session(decision.room, decision.identity)
        if session is not None and not session.hidden:
            self.broadcast(decision.room, [session.info()])
        if session is not None:
            self._update_forwards(session)

    def _update_forwards(self, session: ParticipantSession) -> None:
        """Changes to the source show in the rooms it is forwarded to (and in their RoomService views)."""
        source = session.participant()
        for forward in self._forwards_of(session):
            with contextlib.suppress(NotFound):
                copy = self.runtime.engine.participant(forward.room, forward.identity)
                copy.name, copy.metadata = source.name, source.metadata
                copy.attributes = dict(source.attributes)
            if not forward.hidden:
                self.broadcast(forward.room, [forward.info()])

    def _on_track_muted(self, decision: TrackMuted) -> None:
        session = self._session(decision.room, decision.identity)
        if session is None:
            return
        session.signal.send(
            rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=decision.track_sid, muted=decision.muted))
        )
        if not session.hidden:
            self.broadcast(decision.room, [session.info()])
        self._update_forwards(session)

    def _on_send_data(self, decision: SendData) -> None:
        self.deliver(decision.room, decision.packet, decision.reliable, decision.destinations)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
