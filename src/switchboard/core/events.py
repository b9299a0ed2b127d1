"""Decisions that core hands to the I/O layer. Core never performs them; it only says what must happen."""

from dataclasses import dataclass, field
from enum import Enum

from switchboard.core.dispatch import DispatchSpec
from switchboard.core.jobs import Job
from switchboard.core.rooms import Participant, Room, Track


@dataclass(frozen=True)
class RoomStarted:
    room: str
    sid: str
    # What the room was created with, for the store; equality and matching stay on room and sid.
    created_at: float = field(default=0.0, kw_only=True, compare=False)
    empty_timeout: int = field(default=0, kw_only=True, compare=False)
    departure_timeout: int = field(default=0, kw_only=True, compare=False)
    max_participants: int = field(default=0, kw_only=True, compare=False)
    metadata: str = field(default="", kw_only=True, compare=False)
    restored: bool = field(default=False, kw_only=True, compare=False)
    """Brought back from the store (its node was lost): its dispatches came with it."""


@dataclass(frozen=True)
class RoomClosed:
    room: str
    sid: str
    reason: str
    handed_over: bool = field(default=False, kw_only=True, compare=False)
    """Closed here only (its node lost its lease): the store keeps its record, as it was, for the node
    that takes the room over."""


@dataclass(frozen=True)
class DispatchCreated:
    """A dispatch was added to a room (API, room creation, or a participant's token)."""

    room: str
    dispatch_id: str
    agent_name: str
    # What the store keeps of it; equality stays on the three above.
    spec: DispatchSpec = field(default_factory=DispatchSpec, kw_only=True, compare=False)
    created_at: float = field(default=0.0, kw_only=True, compare=False)


@dataclass(frozen=True)
class DispatchReferenced:
    """A singleton agent's dispatch is shared by one request more, or one less (DeleteDispatch)."""

    room: str
    dispatch_id: str
    references: int


@dataclass(frozen=True)
class DispatchDeleted:
    """The dispatch left its room (DeleteDispatch); its jobs ended first."""

    room: str
    dispatch_id: str
    job_ids: tuple[str, ...]
    """Its jobs, which the store forgets with it."""


@dataclass(frozen=True)
class JobQueued:
    """A job waits for a worker: just launched, or restarted after an attempt failed (its attempts say
    why). Offers and refusals are not decisions of their own: the job stays pending meanwhile."""

    job: Job


@dataclass(frozen=True)
class JobEnded:
    job: Job
    handed_over: bool = field(default=False, kw_only=True, compare=False)
    """Ended here only: its room was handed over (this node lost its lease). The store keeps the job as it
    was, and the node that takes the room over runs it again: for the cluster, it has not ended."""


@dataclass(frozen=True)
class JobStarted:
    """The job runs: its worker said so, or its agent joined the room."""

    job: Job


@dataclass(frozen=True)
class JobChanged:
    """The job changed in a way that only its stored record shows: its worker reported on it for the first
    time after its agent had joined, or a copy was taken back (revived, reattached)."""

    job: Job


@dataclass(frozen=True)
class ParticipantJoined:
    """Observed, not acted upon: webhooks and metrics follow who is in which room."""

    room: str
    participant: Participant


@dataclass(frozen=True)
class ParticipantLeft:
    """The participant is no longer in the room (left, lost, removed, replaced, or the room closed)."""

    room: str
    participant: Participant


@dataclass(frozen=True)
class TrackPublished:
    room: str
    participant: Participant
    track: Track


@dataclass(frozen=True)
class TrackUnpublished:
    room: str
    participant: Participant
    track: Track


class DisconnectCause(Enum):
    DUPLICATE_IDENTITY = "duplicate identity"
    REMOVED = "removed"
    ROOM_DELETED = "room deleted"
    ROOM_CLOSED = "room closed"
    JOB_ENDED = "job ended"
    """An agent whose job ended or was superseded by a later attempt."""


@dataclass(frozen=True)
class DisconnectParticipant:
    room: str
    identity: str
    reason: str
    cause: DisconnectCause
    sid: str
    """The connection to close: a newer connection of the same identity must not be touched."""


@dataclass(frozen=True)
class ParticipantUpdated:
    """What others see of the participant changed (name, metadata, attributes, tracks)."""

    room: str
    identity: str


@dataclass(frozen=True)
class TrackMuted:
    room: str
    identity: str
    track_sid: str
    muted: bool
    by_server: bool = field(default=False, kw_only=True, compare=False)
    """Muted by the server's API (MutePublishedTrack), not by its publisher: the publisher is told to."""


@dataclass(frozen=True)
class SendData:
    """Data from the server (RoomService.SendData) to the room's participants."""

    room: str
    packet: bytes
    reliable: bool
    destinations: frozenset[str]


@dataclass(frozen=True)
class JobContext:
    """What a worker is told about a job besides the job itself: its room, what its dispatch asked for,
    and the participant it is for (participant and publisher jobs)."""

    room: Room
    dispatch: DispatchSpec
    target: Participant | None


@dataclass(frozen=True)
class OfferJob:
    """Ask the worker whether it takes the job (AvailabilityRequest)."""

    worker_id: str
    job: Job
    resuming: bool
    context: JobContext = field(kw_only=True, compare=False, repr=False)
    """Follows from the job, so equality is the job's."""


@dataclass(frozen=True)
class AgentParticipant:
    """How the agent will appear in the room, as the worker asked in its availability answer."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AssignJob:
    """Hand the accepted job to the worker, with a token to join the room as `participant` (JobAssignment)."""

    worker_id: str
    job: Job
    participant: AgentParticipant
    context: JobContext = field(kw_only=True, compare=False, repr=False)


@dataclass(frozen=True)
class TerminateJob:
    """Tell the worker to stop the job (JobTermination)."""

    worker_id: str
    job_id: str
    reason: str


@dataclass(frozen=True)
class WorkerDrained:
    """An operator drained (or undrained) a worker: on a cluster, every node's engine must hold to it."""

    worker_id: str
    drained: bool


Decision = (
    RoomStarted
    | RoomClosed
    | DispatchCreated
    | DispatchReferenced
    | DispatchDeleted
    | JobQueued
    | JobEnded
    | JobStarted
    | JobChanged
    | ParticipantJoined
    | ParticipantLeft
    | TrackPublished
    | TrackUnpublished
    | DisconnectParticipant
    | ParticipantUpdated
    | TrackMuted
    | SendData
    | OfferJob
    | AssignJob
    | TerminateJob
    | WorkerDrained
)
