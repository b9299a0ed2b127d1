"""Jobs: one attempt-chain to run one dispatch's agent for one room (or one participant), and its states.

A job is never dropped: it is pending until a worker takes it, and it ends only with a status and a reason.

    PENDING ──offer──▶ OFFERED ──assign──▶ ASSIGNED ──start──▶ RUNNING
       ▲                  │                    │                  │
       └─ reject, withdraw┘                    │                  │
       └──────────── requeue (worker lost, restart policy) ───────┘
    PENDING, OFFERED, ASSIGNED, RUNNING ──reattach (worker reconnected with it)──▶ RUNNING
    PENDING, OFFERED ──revive (the previous attempt's copy runs after all)──▶ RUNNING
    any state that has not ended ──end──▶ SUCCEEDED | FAILED

Each run of the job on a worker is an attempt, numbered from 1; a requeue closes the current attempt
(kept in `attempts` with its worker and end reason) and opens the next. The agent's token names the job
and the attempt, so a copy of an earlier attempt is recognised wherever it shows up.

While its worker's connection is gone, an assigned or running job is "orphaned" (`orphaned_at` set): it
keeps its state for a grace period in which the reconnecting worker may claim it back.
"""

from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Attempt:
    """An earlier attempt of a job: where it ran and why it ended."""

    number: int
    worker_id: str
    agent_identity: str
    started_at: float | None
    ended_at: float
    error: str
    copy_may_live: bool
    """Its worker did not report its end (timed out, disconnected, agent lost): the copy may still run,
    and if it shows up before another attempt is assigned, it is taken back instead of run again."""


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
    attempt: int = 1
    attempts: list[Attempt] = field(default_factory=list)
    """The earlier attempts, oldest first."""
    retry_at: float | None = None
    """A restarted job is not offered before this time (restarts back off)."""
    reported: bool = False
    """The worker reports on this attempt (update_job); one that never does (the Node framework) is
    followed through its agent participant instead."""
    tried_workers: set[str] = field(default_factory=set)
    """Workers not to offer this job again until they report their status anew."""
    rejected_by: dict[str, int] = field(default_factory=dict)
    """Workers that said no during this attempt, and how often: part of the failure reason."""
    unanswered_by: dict[str, int] = field(default_factory=dict)
    """Workers that did not answer the offer in time during this attempt, and how often."""
    excluded_workers: set[str] = field(default_factory=set)
    """Workers never offered this job again: they accepted it once and did not start it in time."""
    stopping: dict[str, float] = field(default_factory=dict)
    """Workers told to stop a copy of this job, whose end they have not reported yet, and until when
    they are not offered the job (that end may never be reported). Two copies of one job on one worker
    could not be told apart: livekit-agents would run both under the one job id, and the first one's
    final report would be taken for the second's."""

    @property
    def restarts(self) -> int:
        return self.attempt - 1

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

    def reject(self, now: float, *, answered: bool = True) -> None:
        """The offered worker said no (or, not `answered`, did not answer in time): back to pending, same
        deadline."""
        self._move({JobStatus.OFFERED}, JobStatus.PENDING, now)
        refusals = self.rejected_by if answered else self.unanswered_by
        refusals[self.worker_id] = refusals.get(self.worker_id, 0) + 1
        self.worker_id = ""

    def withdraw(self, now: float) -> None:
        """The offer is taken back before its worker answered (the worker was drained): back to pending,
        same deadline, the worker neither counted as refusing nor as tried."""
        self._move({JobStatus.OFFERED}, JobStatus.PENDING, now)
        self.tried_workers.discard(self.worker_id)
        self.worker_id = ""

    def assign(self, agent_identity: str, now: float) -> None:
        self._move({JobStatus.OFFERED}, JobStatus.ASSIGNED, now)
        self.agent_identity = agent_identity

    def start(self, now: float) -> None:
        self._move({JobStatus.ASSIGNED}, JobStatus.RUNNING, now)
        self.started_at = now

    def requeue(self, reason: str, now: float, retry_at: float | None, *, copy_may_live: bool) -> None:
        """The attempt ended without finishing the job: the next one starts pending (not offered before
        `retry_at`), with a fresh deadline counted from then, no tried set and no error of its own."""
        self._move({JobStatus.OFFERED, JobStatus.ASSIGNED, JobStatus.RUNNING}, JobStatus.PENDING, now)
        self.attempts.append(
            Attempt(
                self.attempt, self.worker_id, self.agent_identity, self.started_at, now, reason, copy_may_live
            )
        )
        self.attempt += 1
        self.error = ""
        self.worker_id = ""
        self.agent_identity = ""
        self.started_at = None
        self.reported = False
        self.retry_at = retry_at
        self.pending_since = now if retry_at is None else retry_at
        self.tried_workers.clear()
        self.rejected_by.clear()
        self.unanswered_by.clear()

    def earlier_copy_gone(self) -> None:
        """The previous attempt's copy is known to have ended, or has been told to: it is not taken back."""
        if self.attempts:
            self.attempts[-1] = replace(self.attempts[-1], copy_may_live=False)

    def await_copy_end(self, worker_id: str, until: float) -> None:
        """`worker_id` was told to stop a copy of this job: wait for its end there (see `stopping`)."""
        self.stopping[worker_id] = until

    def stopped_waiting(self, now: float) -> bool:
        """Stop waiting for the ends that were due by `now`; whether there were any."""
        due = [worker_id for worker_id, until in self.stopping.items() if until <= now]
        for worker_id in due:
            del self.stopping[worker_id]
        return bool(due)

    @property
    def revivable(self) -> bool:
        """Restarted, not yet assigned again, and the previous attempt's copy may still run."""
        return (
            self.status in (JobStatus.PENDING, JobStatus.OFFERED)
            and bool(self.attempts)
            and self.attempts[-1].copy_may_live
        )

    def revive(self, worker_id: str, now: float) -> None:
        """The previous attempt's copy runs after all (on `worker_id`), and no other copy was assigned:
        it is the job again, instead of a second copy."""
        if not self.revivable:
            raise InvalidTransition(f"job {self.id}: no earlier copy to take back")
        self._move({JobStatus.PENDING, JobStatus.OFFERED}, JobStatus.RUNNING, now)
        previous = self.attempts.pop()
        self.worker_id = worker_id
        self.attempt = previous.number
        self.agent_identity = previous.agent_identity
        self.error = ""
        self.started_at = now if previous.started_at is None else previous.started_at
        self.retry_at = None
        self.excluded_workers.discard(worker_id)

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

    def start_waiting(self, now: float) -> None:
        """A restarted job's back-off is over: from now on it may be offered, and its deadline counts."""
        self.retry_at = None
        self.pending_since = now

    def end(self, succeeded: bool, error: str, now: float) -> None:
        self._move(set(JobStatus) - ENDED, JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED, now)
        self.error = error
        self.ended_at = now
