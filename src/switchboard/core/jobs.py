"""Jobs: one attempt-chain to run one dispatch's agent for one room (or one participant), and its states.

A job is never dropped: it is pending until a worker takes it, and it ends only with a status and a reason.

    PENDING ──offer──▶ OFFERED ──assign──▶ ASSIGNED ──start──▶ RUNNING
       ▲                  │                    │                  │
       └──── reject ──────┘                    │                  │
       └──────────── requeue (worker lost, restart policy) ───────┘
    PENDING, OFFERED, ASSIGNED, RUNNING ──reattach (worker reconnected with it)──▶ RUNNING
    any state that has not ended ──end──▶ SUCCEEDED | FAILED

While its worker's connection is gone, an assigned or running job is "orphaned" (`orphaned_at` set): it
keeps its state for a grace period in which the reconnecting worker may claim it back.
"""

from dataclasses import dataclass, field
from enum import Enum, IntEnum


class JobType(IntEnum):
    """Same numbers as ``livekit.JobType``."""

    ROOM = 0
    PUBLISHER = 1
    PARTICIPANT = 2


class JobStatus(Enum):
    PENDING = "pending"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ENDED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})


class InvalidTransition(Exception):
    """A state change that the job's current state does not allow: a bug in the caller, never user input."""


@dataclass
class Job:
    id: str
    dispatch_id: str
    room: str
    type: JobType
    agent_name: str
    created_at: float
    target_identity: str = ""
    """The participant a PUBLISHER or PARTICIPANT job is about; empty for ROOM jobs."""
    deployment: str = ""
    status: JobStatus = JobStatus.PENDING
    error: str = ""
    worker_id: str = ""
    agent_identity: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    updated_at: float = 0.0
    pending_since: float = 0.0
    offered_at: float = 0.0
    orphaned_at: float | None = None
    restarts: int = 0
    tried_workers: set[str] = field(default_factory=set)
    """Workers not to offer this job again until they report their status anew."""
    rejected_by: set[str] = field(default_factory=set)
    """Workers that said no (or did not answer) during this attempt, for the failure reason."""

    def __post_init__(self) -> None:
        self.updated_at = self.pending_since = self.created_at

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def _move(self, allowed: frozenset[JobStatus] | set[JobStatus], to: JobStatus, now: float) -> None:
        if self.status not in allowed:
            raise InvalidTransition(f"job {self.id}: cannot go from {self.status.value} to {to.value}")
        self.status = to
        self.updated_at = now
        self.orphaned_at = None

    def offer(self, worker_id: str, now: float) -> None:
        self._move({JobStatus.PENDING}, JobStatus.OFFERED, now)
        self.worker_id = worker_id
        self.offered_at = now
        self.tried_workers.add(worker_id)

    def reject(self, now: float) -> None:
        """The offered worker said no (or did not answer in time): back to pending, same deadline."""
        self._move({JobStatus.OFFERED}, JobStatus.PENDING, now)
        self.rejected_by.add(self.worker_id)
        self.worker_id = ""

    def assign(self, agent_identity: str, now: float) -> None:
        self._move({JobStatus.OFFERED}, JobStatus.ASSIGNED, now)
        self.agent_identity = agent_identity

    def start(self, now: float) -> None:
        self._move({JobStatus.ASSIGNED}, JobStatus.RUNNING, now)
        self.started_at = now

    def requeue(self, reason: str, now: float) -> None:
        """The job's worker is gone; a new attempt starts pending, with a fresh deadline and no tried set."""
        self._move({JobStatus.OFFERED, JobStatus.ASSIGNED, JobStatus.RUNNING}, JobStatus.PENDING, now)
        self.error = reason
        self.worker_id = ""
        self.agent_identity = ""
        self.started_at = None
        self.pending_since = now
        self.restarts += 1
        self.tried_workers.clear()
        self.rejected_by.clear()

    def orphan(self, now: float) -> None:
        """The worker's connection is gone; the job waits for it to come back or for the grace to end."""
        if self.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            raise InvalidTransition(f"job {self.id}: only an assigned or running job can be orphaned")
        self.orphaned_at = now

    def reattach(self, worker_id: str, now: float) -> None:
        """A reconnected worker says it still runs this job: it is running there, not to be run again."""
        self._move(
            {JobStatus.PENDING, JobStatus.OFFERED, JobStatus.ASSIGNED, JobStatus.RUNNING},
            JobStatus.RUNNING,
            now,
        )
        self.worker_id = worker_id
        if self.started_at is None:
            self.started_at = now

    def end(self, succeeded: bool, error: str, now: float) -> None:
        self._move(set(JobStatus) - ENDED, JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED, now)
        self.error = error
        self.ended_at = now
