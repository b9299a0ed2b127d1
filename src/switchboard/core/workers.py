"""Workers: agent processes registered on `/agent`, their capacity, and which jobs they hold."""

from dataclasses import dataclass, field
from enum import IntEnum

from switchboard.core.jobs import JobType


class WorkerStatus(IntEnum):
    """Same numbers as ``livekit.WorkerStatus``."""

    AVAILABLE = 0
    FULL = 1


# Without a report to derive it from, a job is assumed to add this much load (0..1) to its worker.
DEFAULT_JOB_LOAD = 0.05

WorkerKey = tuple[str, JobType, str]
"""(agent name, job type, deployment): a job goes only to workers registered under its key."""


@dataclass(frozen=True)
class AvailabilityAnswer:
    """A worker's answer to an offer (AvailabilityResponse)."""

    available: bool
    terminate: bool = False
    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class JobUpdate(IntEnum):
    """What a worker may report about a job; same numbers as ``livekit.JobStatus``."""

    RUNNING = 1
    SUCCESS = 2
    FAILED = 3


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker says when it registers."""

    agent_name: str = ""
    job_type: JobType = JobType.ROOM
    deployment: str = ""
    version: str = ""
    node: str = ""
    """The cluster node the worker is connected to; empty: this one (and always, without a cluster)."""


@dataclass
class Worker:
    id: str
    spec: WorkerSpec
    registered_at: float
    status: WorkerStatus = WorkerStatus.AVAILABLE
    load: float = 0.0
    reported_jobs: int = 0
    assigned_since_report: int = 0
    """Jobs assigned after the worker's last status report: its reported load does not show them yet."""
    jobs: set[str] = field(default_factory=set)
    """Ids of the jobs offered to, assigned to or running on this worker."""
    offered_job: str = ""
    """The job this worker is being asked about. One question at a time: a livekit-agents worker counts
    the jobs it has accepted but not yet launched against its load, and would refuse a burst."""
    drained: bool = False
    """An operator drained it: it gets no new job, and the ones it holds go on. Switchboard's own state:
    the worker protocol has no message that tells a worker to drain."""

    @property
    def key(self) -> WorkerKey:
        return (self.spec.agent_name, self.spec.job_type, self.spec.deployment)

    @property
    def accepting(self) -> bool:
        return self.status is WorkerStatus.AVAILABLE and not self.offered_job and not self.drained

    def effective_load(self) -> float:
        """Reported load plus an estimate for the jobs assigned since that report."""
        per_job = self.load / self.reported_jobs if self.reported_jobs else DEFAULT_JOB_LOAD
        return self.load + self.assigned_since_report * max(per_job, DEFAULT_JOB_LOAD)
