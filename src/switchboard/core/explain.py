"""Why a job is where it is: what was tried, and why it did not work, in words an operator can act on.

A job that nobody took ends with the same words as its live explanation (the engine builds both from
here), so what `ExplainDispatch` says while a job waits and the reason it fails with never disagree.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.workers import Worker, WorkerKey, WorkerStatus


def who(agent_name: str) -> str:
    return f"agent '{agent_name}'" if agent_name else "automatic agents"


def describe_key(key: WorkerKey) -> str:
    """A worker key as an operator reads it: "agent 'x'", "agent 'x' (publisher jobs, deployment 'eu')"."""
    agent_name, job_type, deployment = key
    details = [f"{job_type.name.lower()} jobs"] if job_type is not JobType.ROOM else []
    details += [f"deployment '{deployment}'"] if deployment else []
    return who(agent_name) + (f" ({', '.join(details)})" if details else "")


def registered_keys(keys: Iterable[WorkerKey]) -> str:
    """What the workers that are connected serve, for a job that none of them can take."""
    described = sorted({describe_key(key) for key in keys})
    if not described:
        return "no worker is registered at all"
    return "workers are registered for " + ", ".join(described)


@dataclass(frozen=True)
class WorkerVerdict:
    """One worker of the job's agent, and why it does not run the job."""

    worker_id: str
    load: float
    why: str

    def __str__(self) -> str:
        return f"{self.worker_id} {self.why} (load {self.load:.2f})"


def _times(count: int) -> str:
    return "" if count == 1 else f" {count} times"


def worker_verdict(
    job: Job, worker: Worker, load_threshold: float, availability_timeout: float
) -> WorkerVerdict:
    """Why `worker` has not taken the pending `job`: the first cause that applies, most telling first."""
    refusals = []
    if declined := job.rejected_by.get(worker.id, 0):
        refusals.append("declined it" + _times(declined))
    if unanswered := job.unanswered_by.get(worker.id, 0):
        refusals.append(f"did not answer within {availability_timeout:g}s" + _times(unanswered))
    if worker.id in job.excluded_workers:
        why = "did not start it in time before"
    elif worker.id in job.stopping:
        why = "is stopping an earlier copy of it, and has not reported that copy's end"
    elif worker.drained:
        why = "was drained by an operator"
    elif refusals:
        why = " and ".join(refusals)
    elif worker.status is WorkerStatus.FULL:
        why = "reported itself full"
    elif worker.load >= load_threshold:
        why = f"was over the load threshold {load_threshold:g}"
    elif worker.offered_job:
        why = "was busy with other offers"
    else:
        why = "was not asked yet"
    return WorkerVerdict(worker.id, worker.load, why)


@dataclass(frozen=True)
class Explanation:
    """Where one job of a dispatch is, and why; `job_id` is empty for a dispatch that has no job."""

    dispatch_id: str
    agent_name: str
    job_id: str
    status: JobStatus | None
    summary: str
    """One sentence: where the job is and why (for an ended job, the reason it ended with)."""
    workers: tuple[WorkerVerdict, ...] = ()
    """For a pending job: each worker of its agent and why it has not taken it."""
    since: float | None = None
    """When the job entered its current state (pending: since when it waits)."""
    until: float | None = None
    """When that state ends by itself, or changes: a pending job fails, an offer moves on, a back-off is
    over, a worker stopping an earlier copy may be offered the job anyway."""
    earlier_attempts: tuple[str, ...] = ()
    """Why each earlier attempt of the job ended, oldest first."""
