"""The engine: rooms, their dispatches and jobs, and the rules that tie them together.

Every method takes the current time; nothing here reads a clock, sleeps or does I/O. Side effects the
outside world must carry out are queued as decisions and taken with `take_decisions()`.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from switchboard.core import ids
from switchboard.core.dispatch import Dispatch, DispatchSpec
from switchboard.core.errors import InvalidArgument, NotFound, ResourceExhausted
from switchboard.core.events import Decision, DisconnectParticipant, JobEnded, RoomClosed, RoomStarted
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.limits import Limits, check_attributes, check_metadata, check_name
from switchboard.core.rooms import Participant, Room


@dataclass(frozen=True)
class EngineSettings:
    limits: Limits = field(default_factory=Limits)
    empty_timeout: int = 300
    departure_timeout: int = 20
    max_participants: int = 0
    pending_timeout: float = 60.0
    """How long a job may wait for a worker before it fails with a reason."""


@dataclass(frozen=True)
class RoomSpec:
    """The fields of CreateRoomRequest (or a token's roomConfig) that shape a new room; 0/None = default."""

    name: str
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    agents: tuple[DispatchSpec, ...] | None = None


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.rooms: dict[str, Room] = {}
        self._decisions: list[Decision] = []

    def take_decisions(self) -> list[Decision]:
        decisions, self._decisions = self._decisions, []
        return decisions

    # Rooms

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise NotFound("requested room does not exist")
        return room

    def list_rooms(self, names: Iterable[str] = ()) -> list[Room]:
        wanted = list(names)
        if not wanted:
            return list(self.rooms.values())
        return [self.rooms[name] for name in dict.fromkeys(wanted) if name in self.rooms]

    def create_room(self, spec: RoomSpec, now: float) -> Room:
        """Create the room, or return the live one unchanged (LiveKit does the same)."""
        limits = self.settings.limits
        check_name("room name", spec.name, limits.max_room_name_length)
        check_metadata("room metadata", spec.metadata, limits)
        if min(spec.empty_timeout, spec.departure_timeout, spec.max_participants) < 0:
            raise InvalidArgument("room timeouts and max_participants must not be negative")
        for agent in spec.agents or ():
            agent.validate(limits)
        existing = self.rooms.get(spec.name)
        if existing is not None:
            return existing
        room = Room(
            name=spec.name,
            sid=ids.new_id(ids.ROOM),
            created_at=now,
            empty_timeout=spec.empty_timeout or self.settings.empty_timeout,
            departure_timeout=spec.departure_timeout or self.settings.departure_timeout,
            max_participants=spec.max_participants or self.settings.max_participants,
            metadata=spec.metadata,
        )
        self.rooms[room.name] = room
        self._decisions.append(RoomStarted(room.name, room.sid))
        # A room with no explicit agents gets the implicit automatic dispatch (empty agent name).
        for agent in spec.agents or (DispatchSpec(),):
            self._add_dispatch(room, agent, now)
        return room

    def delete_room(self, name: str, now: float) -> Room:
        room = self.room(name)
        self._close_room(room, "deleted by API request", now)
        return room

    def update_room_metadata(self, name: str, metadata: str) -> Room:
        room = self.room(name)
        check_metadata("room metadata", metadata, self.settings.limits)
        room.metadata = metadata
        return room

    def _close_room(self, room: Room, reason: str, now: float) -> None:
        for identity in list(room.participants):
            self._decisions.append(DisconnectParticipant(room.name, identity, f"room closed: {reason}"))
        room.participants.clear()
        for dispatch in room.dispatches.values():
            self._end_dispatch_jobs(dispatch, f"terminated: room closed ({reason})", now)
        del self.rooms[room.name]
        self._decisions.append(RoomClosed(room.name, room.sid, reason))

    # Participants

    def participant_joined(self, room_name: str, participant: Participant, now: float) -> None:
        room = self.room(room_name)
        limits = self.settings.limits
        check_name("participant identity", participant.identity, limits.max_participant_identity_length)
        check_metadata("participant metadata", participant.metadata, limits)
        check_attributes("participant attributes", participant.attributes, limits)
        replaced = room.participants.pop(participant.identity, None)
        if replaced is not None:
            self._decisions.append(
                DisconnectParticipant(room.name, replaced.identity, "replaced by a new connection")
            )
        elif (
            not participant.dependent
            and room.max_participants
            and room.num_participants >= room.max_participants
        ):
            raise ResourceExhausted("room is full")
        room.participants[participant.identity] = participant

    def participant_left(self, room_name: str, identity: str, now: float) -> Participant:
        room = self.room(room_name)
        participant = room.participants.pop(identity, None)
        if participant is None:
            raise NotFound("participant does not exist")
        room.last_departure_at = now
        return participant

    def remove_participant(self, room_name: str, identity: str, now: float) -> Participant:
        participant = self.participant_left(room_name, identity, now)
        self._decisions.append(DisconnectParticipant(room_name, identity, "removed by API request"))
        return participant

    def participant(self, room_name: str, identity: str) -> Participant:
        participant = self.room(room_name).participants.get(identity)
        if participant is None:
            raise NotFound("participant does not exist")
        return participant

    # Dispatches

    def create_dispatch(self, room_name: str, spec: DispatchSpec, now: float) -> Dispatch:
        """Add a dispatch, creating the room with defaults if it does not exist (as LiveKit's auto_create)."""
        spec.validate(self.settings.limits)
        room = self.rooms.get(room_name)
        if room is None:
            room = self.create_room(RoomSpec(name=room_name), now)
        return self._add_dispatch(room, spec, now)

    def delete_dispatch(self, room_name: str, dispatch_id: str, now: float) -> Dispatch:
        room = self.rooms.get(room_name)
        dispatch = room.dispatches.pop(dispatch_id, None) if room else None
        if dispatch is None:
            raise NotFound("dispatch ID not found")
        dispatch.deleted_at = now
        self._end_dispatch_jobs(dispatch, "terminated: dispatch deleted", now)
        return dispatch

    def list_dispatches(self, room_name: str, dispatch_id: str = "") -> list[Dispatch]:
        room = self.rooms.get(room_name)
        if room is None:
            return []
        if dispatch_id:
            found = room.dispatches.get(dispatch_id)
            return [found] if found else []
        return list(room.dispatches.values())

    def _add_dispatch(self, room: Room, spec: DispatchSpec, now: float) -> Dispatch:
        dispatch = Dispatch(id=ids.new_id(ids.DISPATCH), room=room.name, spec=spec, created_at=now)
        room.dispatches[dispatch.id] = dispatch
        dispatch.jobs.append(self._new_job(dispatch, JobType.ROOM, now))
        return dispatch

    def _new_job(self, dispatch: Dispatch, job_type: JobType, now: float, target: str = "") -> Job:
        return Job(
            id=ids.new_id(ids.JOB),
            dispatch_id=dispatch.id,
            room=dispatch.room,
            type=job_type,
            agent_name=dispatch.agent_name,
            created_at=now,
            target_identity=target,
        )

    def _end_dispatch_jobs(self, dispatch: Dispatch, reason: str, now: float) -> None:
        for job in dispatch.jobs:
            if not job.ended:
                # A job that ran and was stopped on request succeeded; one that never started failed.
                self._end_job(job, job.started_at is not None, reason, now)

    def _end_job(self, job: Job, succeeded: bool, reason: str, now: float) -> None:
        job.end(succeeded, reason, now)
        self._decisions.append(JobEnded(job))

    # Time

    def tick(self, now: float) -> None:
        """Apply every deadline that has passed: idle rooms close, jobs nobody took fail."""
        timeout = self.settings.pending_timeout
        for room in list(self.rooms.values()):
            deadline = room.close_deadline()
            if deadline is not None and now >= deadline:
                self._close_room(room, "idle timeout", now)
                continue
            for dispatch in room.dispatches.values():
                for job in dispatch.jobs:
                    if job.status is JobStatus.PENDING and now >= job.pending_since + timeout:
                        self._end_job(job, False, self._pending_failure(job), now)

    def _pending_failure(self, job: Job) -> str:
        who = f"agent '{job.agent_name}'" if job.agent_name else "automatic agents"
        return f"no worker registered for {who} within {self.settings.pending_timeout:g}s"

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` has something to do, or None."""
        deadlines: list[float] = []
        timeout = self.settings.pending_timeout
        for room in self.rooms.values():
            close = room.close_deadline()
            if close is not None:
                deadlines.append(close)
            deadlines.extend(
                job.pending_since + timeout
                for dispatch in room.dispatches.values()
                for job in dispatch.jobs
                if job.status is JobStatus.PENDING
            )
        return min(deadlines, default=None)
