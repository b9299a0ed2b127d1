"""One room's live side: who is connected, what they publish, and what reaches whom.

As LiveKit's `Room`: it owns the participants' sessions and the participants forwarded into it
(ForwardParticipant), broadcasts signal responses to them, turns a publication into subscriptions and
an unpublication into unsubscriptions, and delivers data packets. A session owns its own signalling and
transports; the engine keeps the rules (who is in the room, its timeouts).
"""

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from switchboard.core.errors import NotFound
from switchboard.rtc.forward import Forward
from switchboard.rtc.network import UdpPortRange
from switchboard.rtc.relay import Publisher, TrackRelay
from switchboard.rtc.settings import RtcSettings
from switchboard.rtc.speakers import ActiveSpeakers
from switchboard.runtime import Runtime

if TYPE_CHECKING:
    from switchboard.rtc.participant import ParticipantSession

log = logging.getLogger("switchboard.rtc")


class Room:
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        settings: RtcSettings,
        server_info: models.ServerInfo,
        on_empty: Callable[["Room"], None],
        speakers: ActiveSpeakers,
        ports: UdpPortRange | None,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.settings = settings
        self.server_info = server_info
        self.sessions: dict[str, ParticipantSession] = {}
        """Connected participants, by identity."""
        self.forwards: dict[str, Forward] = {}
        """Participants of other rooms forwarded into this one, by identity."""
        self._on_empty = on_empty
        self.speakers = speakers
        """Who is talking, told to the room's participants while it has any."""
        self.ports = ports
        """The UDP ports media may use (rtc.port_range_*); None: any."""

    # Who is here

    def session(self, identity: str) -> "ParticipantSession | None":
        return self.sessions.get(identity)

    def live(self, identity: str) -> "ParticipantSession":
        session = self.sessions.get(identity)
        if session is None or session.closed:
            raise NotFound("participant does not exist")
        return session

    def others(self, session: "ParticipantSession | None" = None) -> list["ParticipantSession"]:
        """The live sessions, but `session`."""
        return [s for s in self.sessions.values() if s is not session and not s.closed]

    def publishers(self) -> list[Publisher]:
        return [*self.others(), *(f for f in self.forwards.values() if not f.closed)]

    def visible(self, session: "ParticipantSession | None" = None) -> list[models.ParticipantInfo]:
        """What a joining participant is told of the others (hidden ones are never shown)."""
        present: list[ParticipantSession | Forward] = [*self.others(session), *self.forwards.values()]
        return [p.info() for p in present if not p.hidden]

    def add(self, session: "ParticipantSession") -> None:
        self.sessions[session.identity] = session
        self.speakers.watch(self.name)

    def remove(self, session: "ParticipantSession") -> None:
        if self.sessions.get(session.identity) is session:
            del self.sessions[session.identity]
            self._maybe_empty()

    def _maybe_empty(self) -> None:
        if not self.sessions and not self.forwards:
            self._on_empty(self)

    # Signalling to everyone

    def broadcast(self, response: rtc.SignalResponse, exclude: "ParticipantSession | None" = None) -> None:
        """Send one signal response to every live participant of the room (but `exclude`)."""
        for session in self.others(exclude):
            session.signal.send(response)

    def announce(
        self, participants: list[models.ParticipantInfo], exclude: "ParticipantSession | None" = None
    ) -> None:
        """A participant update (join, change, leave) to everyone."""
        self.broadcast(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=participants)), exclude)

    # Publications

    def track_published(self, publisher: Publisher, relay: TrackRelay, info: models.ParticipantInfo) -> None:
        """A new track: everyone learns of it before any subscriber offer carrying it."""
        self.announce([info])
        for session in self.others():
            if session is not publisher:
                session.subscribe(publisher, relay)

    def track_unpublished(self, relay: TrackRelay) -> None:
        for session in list(self.sessions.values()):
            session.unsubscribe(relay)
            session.forget_track(relay.track_sid)  # track sids are never reused

    def published_track(self, track_sid: str) -> tuple[Publisher, TrackRelay] | None:
        publishers: list[Publisher] = [*self.sessions.values(), *self.forwards.values()]
        for publisher in publishers:
            relay = publisher.relays.get(track_sid)
            if relay is not None and not publisher.closed:
                return publisher, relay
        return None

    def recheck_permissions(self, publisher: Publisher, source: "ParticipantSession") -> None:
        """`publisher` (a participant, or its forward here) changed who may receive its tracks."""
        for session in self.others(source):
            for relay in list(publisher.relays.values()):
                session.recheck_permission(publisher, relay)

    def subscribe_all(self, publisher: Publisher) -> None:
        """Everyone here receives `publisher`'s tracks (it arrived with them, by a move or a forward)."""
        for session in self.others():
            if session is not publisher:
                session.subscribe_to([(publisher, relay) for relay in publisher.relays.values()])

    # Data

    def deliver(
        self,
        payload: bytes,
        reliable: bool,
        destinations: frozenset[str],
        sender: "ParticipantSession | None" = None,
    ) -> None:
        for session in self.others(sender):
            if not destinations or session.identity in destinations:
                session.send_data(payload, reliable)

    # Forwarded participants

    def add_forward(self, forward: Forward) -> None:
        self.forwards[forward.identity] = forward
        if not forward.hidden:
            self.announce([forward.info()])
        self.subscribe_all(forward)

    def end_forward(self, forward: Forward, reason: int, *, in_engine: bool) -> None:
        """The forward leaves this room: its source left or moved (`in_engine`: tell the engine too),
        or it was removed from here."""
        if forward.ended:
            return
        forward.ended = True
        if self.forwards.get(forward.identity) is forward:
            del self.forwards[forward.identity]
        for session in list(self.sessions.values()):
            for relay in list(forward.source.relays.values()):
                session.unsubscribe(relay)
                session.forget_track(relay.track_sid)
        if not forward.hidden:
            self.announce([forward.farewell(reason)])
        if in_engine:
            with contextlib.suppress(NotFound):
                self.runtime.call(
                    lambda engine: engine.participant_left(
                        self.name, forward.identity, self.runtime.now(), sid=forward.sid
                    )
                )
        log.info("forward ended room=%s identity=%s", self.name, forward.identity)
        self._maybe_empty()
