"""The cluster's workers as this node's engine sees them, and the offers this node relays: pure logic, no
I/O (`switchboard.cluster.workers` carries the messages), so that it is tested with engines alone.

Every node's engine holds every worker of the cluster: its own (registered on its `/agent`) and the other
nodes' (registered from their announcements, under the same worker id, with `WorkerSpec.node` set). The
engine of the node that owns a room chooses among all of them with its usual rules.
"""

from dataclasses import dataclass, field
from typing import Any

from switchboard.core.engine import Engine
from switchboard.core.errors import CoreError
from switchboard.core.jobs import JobType
from switchboard.core.workers import WorkerSpec, WorkerStatus

MAX_RELAYED = 10_000
"""Per worker, how many relayed jobs are remembered (the oldest forgotten first): a bound, never reached
by a worker that reports its jobs' ends."""
MAX_HELD = 16
"""Per job whose owner is not known yet, how many of the worker's messages about it wait for the owner (a
worker sends one or two: its answer, its status); later ones are dropped."""


def spec_to_json(spec: WorkerSpec) -> dict[str, Any]:
    return {
        "agent_name": spec.agent_name,
        "job_type": int(spec.job_type),
        "deployment": spec.deployment,
        "version": spec.version,
    }


def spec_from_json(data: dict[str, Any], node: str) -> WorkerSpec:
    return WorkerSpec(
        agent_name=data["agent_name"],
        job_type=JobType(data["job_type"]),
        deployment=data["deployment"],
        version=data["version"],
        node=node,
    )


class RemoteWorkers:
    """Other nodes' workers in this node's engine. Every method is idempotent: an announcement that comes
    twice (a snapshot and the feed, or a write retried) changes nothing the second time."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nodes: dict[str, str] = {}
        """Worker id -> the node it is connected to, for every remote worker this engine holds."""

    def node_of(self, worker_id: str) -> str | None:
        return self.nodes.get(worker_id)

    def registered(self, engine: Engine, node: str, worker_id: str, spec: WorkerSpec, now: float) -> bool:
        """A worker registered on another node; False when it is this node's or already known."""
        if node == self.node_id or worker_id in engine.workers:
            return False
        try:
            engine.register_worker(spec, now, worker_id)
        except CoreError:  # its own node accepted it: a node of another version, say; never offered
            return False
        self.nodes[worker_id] = node
        return True

    def status(
        self, engine: Engine, worker_id: str, status: WorkerStatus | None, load: float, jobs: int, now: float
    ) -> None:
        if worker_id in self.nodes:
            engine.worker_status(worker_id, status, load, jobs, now)

    def gone(self, engine: Engine, worker_id: str, now: float) -> None:
        """The worker disconnected from its node: its jobs wait for it to reconnect (to any node)."""
        if self.nodes.pop(worker_id, None) is not None:
            engine.worker_disconnected(worker_id, now)

    def node_lost(self, engine: Engine, node: str, now: float) -> list[str]:
        """The node died: its workers are gone, their jobs follow their restart policy at once (nobody
        will tell this node whether they reconnect elsewhere). The ids of the workers removed."""
        lost = [worker_id for worker_id, on in self.nodes.items() if on == node]
        for worker_id in lost:
            del self.nodes[worker_id]
            engine.worker_disconnected(worker_id, now, lost=f"worker {worker_id}'s node {node} was lost")
        return lost


@dataclass
class RelayedJob:
    owner: str
    """The node whose engine runs the job (its room's node)."""
    passed: dict[str, int] = field(default_factory=dict)
    """By message kind (offer, assign), the last attempt passed to the worker: a copy is not passed."""
    held: list[dict[str, Any]] = field(default_factory=list)
    """While the owner is not known yet (""): the worker's messages about the job, for the owner, in order."""


class RelayedJobs:
    """One worker's jobs owned by other nodes: where its answers and reports about them go."""

    __slots__ = ("_jobs",)  # one per worker session, on every node: kept small

    def __init__(self) -> None:
        self._jobs: dict[str, RelayedJob] = {}

    def owner(self, job_id: str) -> str | None:
        """The node that owns the job; "" while unknown (listed by migrate_job, not claimed yet); None
        when the job is not relayed (this node's own, or unknown)."""
        job = self._jobs.get(job_id)
        return job.owner if job is not None else None

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def first(self, kind: str, job_id: str, attempt: int, owner: str) -> bool:
        """Whether this `kind` of message (offer, assign) about this attempt of the job is news, to be
        passed to the worker, and not a copy of one already passed."""
        job = self._entry(job_id, owner)
        if job.passed.get(kind, 0) >= attempt:
            return False
        job.passed[kind] = attempt
        return True

    def adopt(self, job_id: str, owner: str) -> list[dict[str, Any]]:
        """The worker runs this job of `owner`'s (reconnected here, it listed the job by migrate_job and
        `owner` took it back, or `owner` stops that copy), or of a node not known yet (""). Returns the
        messages held for the owner until now, to send it."""
        held = self.unclaimed(job_id) or []
        self._entry(job_id, owner)
        return held

    def unclaimed(self, job_id: str) -> list[dict[str, Any]] | None:
        """The messages held for the job while it waits for its owner to claim it; None when it does not
        wait (claimed, ended, or never listed)."""
        job = self._jobs.get(job_id)
        return job.held if job is not None and job.owner == "" else None

    def hold(self, job_id: str, message: dict[str, Any]) -> bool:
        """Keep a message from the worker about a job whose owner is not known yet, until `adopt` names
        the owner; False when it is not kept (the job is not waiting for its owner, or holds enough)."""
        job = self._jobs.get(job_id)
        if job is None or job.owner != "" or len(job.held) >= MAX_HELD:
            return False
        job.held.append(message)
        return True

    def ended(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def _entry(self, job_id: str, owner: str) -> RelayedJob:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            job = self._jobs[job_id] = RelayedJob(owner)
            if len(self._jobs) > MAX_RELAYED:
                del self._jobs[next(iter(self._jobs))]  # the oldest
        return job
