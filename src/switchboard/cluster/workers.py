"""Dispatch across nodes: this node's workers announced to the others, the engine's job decisions for a
worker on another node carried there, and a worker's answers about a job owned elsewhere carried back.

docs/cluster.md ("Dispatch across nodes") lists the messages and their delivery guarantees.
"""

import asyncio
import base64
import json
import logging
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from livekit.protocol import agent

from switchboard.cluster.bus import Message, RedisBus
from switchboard.cluster.directory import MAX_RELAYED, RemoteWorkers, spec_from_json, spec_to_json
from switchboard.cluster.nodes import NodeRegistry
from switchboard.cluster.redis_client import PREFIX
from switchboard.core.events import (
    AgentParticipant,
    AssignJob,
    JobContext,
    OfferJob,
    TerminateJob,
    WorkerDrained,
)
from switchboard.core.jobs import Job
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerSpec, WorkerStatus
from switchboard.runtime import Runtime
from switchboard.workers.hub import WorkerHub, job_message
from switchboard.workers.session import JOB_UPDATES, WorkerSession, status_of

log = logging.getLogger("switchboard.cluster")

CLAIM_LEASES = 2
"""How many node leases a job listed by a reconnected worker (migrate_job) waits for a live node to claim it
(its listing is published again after each but the last): a live owner answers within a Redis round trip;
after that, no live node holds its room. While this node is cut from Redis, it waits on."""
WORKERS = PREFIX + "workers"
"""Hash: worker id -> JSON {node, spec, status, load, jobs, drained}: every worker of the cluster."""


def _encode(job: agent.Job) -> str:
    return base64.b64encode(job.SerializeToString()).decode()


def _decode(data: str) -> agent.Job:
    return agent.Job.FromString(base64.b64decode(data))


def _final(message: Message) -> bool:
    """Whether a worker's message to a job's owner reports the job's end."""
    return bool(message["kind"] == "job_update" and message["update"] != JobUpdate.RUNNING)


class ClusterWorkers:
    """Carries the job decisions (wired in `switchboard.effects` in place of the hub's) and is the hub's
    `WorkerRelay`."""

    def __init__(self, runtime: Runtime, hub: WorkerHub, bus: RedisBus, registry: NodeRegistry) -> None:
        self.runtime = runtime
        self.hub = hub
        self.bus = bus
        self.registry = registry
        self.node_id = registry.node_id
        self.url = registry.url.replace("http", "ws", 1)
        """Where a job for a room of this node joins, when its worker is connected to another node."""
        self.remote = RemoteWorkers(self.node_id)
        self._states: dict[str, dict[str, Any]] = {}
        """This node's workers as the hash holds them (each report rewrites its entry)."""
        self._following = False
        """True while a drain announced by a worker's own node is applied here (not to be sent back)."""
        self._claim_checks: set[asyncio.TimerHandle] = set()
        self._checks: set[asyncio.Task[None]] = set()
        """Checks in Redis of whether a copy's owner is gone (`_route_if_gone`)."""
        self._lost_nodes: set[str] = set()
        """The nodes this node found lost (ids are never reused: a restarted node has a new one)."""
        self._stopped: dict[str, str] = {}
        """Job id -> worker id, for the copies stopped because no node claimed them: a claim that comes
        later after all (this node was cut from Redis) is answered with the job's failure."""
        self._ended: OrderedDict[tuple[str, str], str] = OrderedDict()
        """(worker id, job id) -> owner, for the copies of this node's workers whose end was reported to
        the node they ran for: when another node (where the room came back) stops that copy and waits for
        its end, it is told the copy ended already."""
        hub.relay = self
        registry.on_node_lost(self.node_lost)
        registry.on_lease_regained(self._announce_all)

    async def start(self) -> None:
        await self.bus.start(self.received, self._read_workers)

    async def stop(self) -> None:
        for check in self._claim_checks:
            check.cancel()
        for task in self._checks:
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        for worker_id in self._states:
            self.bus.put(WORKERS, worker_id, None)
        self._states.clear()
        await self.bus.stop()

    async def _read_workers(self) -> None:
        """The workers already connected to the other nodes; those of nodes that are gone (that nobody saw
        go: the whole cluster was down) are forgotten."""
        alive = {node.id for node in await self.registry.nodes()}
        for worker_id, text in (await self.bus.redis.hgetall(WORKERS)).items():
            state = json.loads(text)
            if state["node"] in alive:
                self._worker_seen(worker_id, state)
            else:
                self.bus.put(WORKERS, worker_id, None)

    # This node's workers (the hub's WorkerRelay)

    def registered(self, worker_id: str, spec: WorkerSpec) -> None:
        state = {
            "node": self.node_id,
            "spec": spec_to_json(spec),
            "status": None,
            "load": 0.0,
            "jobs": 0,
            "drained": False,
        }
        self._states[worker_id] = state
        self._announce(worker_id, state)

    def _announce(self, worker_id: str, state: dict[str, Any]) -> None:
        self.bus.put(WORKERS, worker_id, json.dumps(state))
        self.bus.publish({"kind": "worker", "worker": worker_id} | state)

    def _announce_all(self) -> None:
        """This node was cut from Redis longer than its lease: the others found it lost and removed its
        workers (their jobs restarted elsewhere). The workers are still here, and available again."""
        for worker_id, state in self._states.items():
            self._announce(worker_id, state)

    def gone(self, worker_id: str) -> None:
        self._states.pop(worker_id, None)
        self.bus.put(WORKERS, worker_id, None)
        self.bus.publish({"kind": "worker_gone", "node": self.node_id, "worker": worker_id})

    def intercept(self, session: WorkerSession, message: agent.WorkerMessage) -> bool:
        kind = message.WhichOneof("message")
        if kind == "update_worker":
            self._announce_status(session.worker_id, message.update_worker)
        elif kind == "availability" and session.remote_jobs:
            return self._answer_elsewhere(session, message.availability)
        elif kind == "update_job" and session.remote_jobs:
            return self._report_elsewhere(session, message.update_job)
        elif kind == "migrate_job":
            return self._migrate_elsewhere(session, list(message.migrate_job.job_ids))
        return False

    def _announce_status(self, worker_id: str, report: agent.UpdateWorkerStatus) -> None:
        state = self._states.get(worker_id)
        if state is None:
            return
        status = status_of(report)
        if status is not None:
            state["status"] = int(status)
        state["load"], state["jobs"] = report.load, report.job_count
        self.bus.put(WORKERS, worker_id, json.dumps(state))
        self.bus.publish({"kind": "worker_status", "worker": worker_id} | state)

    def _answer_elsewhere(self, session: WorkerSession, answer: agent.AvailabilityResponse) -> bool:
        owner = session.remote_jobs.owner(answer.job_id)
        if owner is None:
            return False
        self._to_owner(
            session,
            answer.job_id,
            owner,
            {
                "kind": "answer",
                "worker": session.worker_id,
                "job": answer.job_id,
                "available": answer.available,
                "terminate": answer.terminate,
                "identity": answer.participant_identity,
                "name": answer.participant_name,
                "metadata": answer.participant_metadata,
                "attributes": dict(answer.participant_attributes),
            },
        )
        return True

    def _report_elsewhere(self, session: WorkerSession, report: agent.UpdateJobStatus) -> bool:
        owner = session.remote_jobs.owner(report.job_id)
        if owner is None:
            return False
        if report.status in JOB_UPDATES:  # JS_PENDING carries nothing to act on
            update, default_error = JOB_UPDATES[report.status]
            message = {"worker": session.worker_id, "job": report.job_id, "update": int(update)}
            self._to_owner(
                session,
                report.job_id,
                owner,
                {"kind": "job_update", "error": report.error or default_error} | message,
            )
            if owner and update is not JobUpdate.RUNNING:
                self._copy_ended(session, report.job_id, owner)
        return True

    def _copy_ended(self, session: WorkerSession, job_id: str, owner: str) -> None:
        """The copy's end was sent to `owner`: nothing more is relayed for it."""
        session.remote_jobs.ended(job_id)
        self._ended[session.worker_id, job_id] = owner
        if len(self._ended) > MAX_RELAYED:
            self._ended.popitem(last=False)  # the oldest

    def _to_owner(self, session: WorkerSession, job_id: str, owner: str, message: Message) -> None:
        """Send the worker's message about a job of another node to it; while that node is not known yet
        (the job was listed by migrate_job, its owner's claim is on its way), keep it until the claim."""
        if owner:
            self.bus.send(owner, message)
        elif not session.remote_jobs.hold(job_id, message):
            log.warning(
                "worker message dropped, its job's owner unknown job=%s kind=%s", job_id, message["kind"]
            )

    def _migrate_elsewhere(self, session: WorkerSession, job_ids: list[str]) -> bool:
        """A reconnected worker lists the jobs it still runs: this node's engine takes back its own; the
        others are announced to every node, and their owners take them back (and say so)."""
        engine = self.runtime.engine
        elsewhere = [job_id for job_id in job_ids if job_id not in engine.jobs]
        if not elsewhere:
            return False
        here = [job_id for job_id in job_ids if job_id in engine.jobs]
        worker_id, now = session.worker_id, self.runtime.now()
        self.runtime.call(lambda engine: engine.migrate_jobs(worker_id, here, now))
        for job_id in elsewhere:  # not this node's to judge: the owner's "owned" will say whose
            session.remote_jobs.adopt(job_id, "")
        self._publish_migrate(session, elsewhere, CLAIM_LEASES)
        return True

    def _publish_migrate(self, session: WorkerSession, job_ids: list[str], checks_left: int) -> None:
        """Ask every node to claim these jobs of the worker's, and check for claims a lease later."""
        self.bus.publish(self._listing(session, job_ids))
        self._check_claims_later(session, job_ids, checks_left)

    def _check_claims_later(self, session: WorkerSession, job_ids: list[str], checks_left: int) -> None:
        def check() -> None:
            self._claim_checks.discard(handle)
            self._check_claims(session, job_ids, checks_left - 1)

        handle = asyncio.get_running_loop().call_later(self.registry.lease.duration, check)
        self._claim_checks.add(handle)

    def _check_claims(self, session: WorkerSession, job_ids: list[str], checks_left: int) -> None:
        """A lease after a worker's jobs were listed: those no node claimed yet are taken back here if their
        room is here now; listed again (a room restored elsewhere since claims them then) while checks
        are left; and once none are, stopped: no live node holds their room, their node died with it."""
        if self.hub.sessions.get(session.worker_id) is not session:
            return  # the worker left since, and its jobs with it
        waiting = [job_id for job_id in job_ids if session.remote_jobs.unclaimed(job_id) is not None]
        mine = [job_id for job_id in waiting if job_id in self.runtime.engine.jobs]
        if mine:
            self._take_back_here(session, mine)
        waiting = [job_id for job_id in waiting if job_id not in mine]
        if not waiting:
            return
        if not self.registry.holds_lease():  # cut from Redis: a claim may be on its way, late
            self._check_claims_later(session, waiting, max(checks_left, 1))
        elif checks_left > 0:
            self._publish_migrate(session, waiting, checks_left)
        else:
            for job_id in waiting:
                self._stop_unclaimed(session, job_id)

    def _take_back_here(self, session: WorkerSession, job_ids: list[str]) -> None:
        """Listed jobs whose room came back on this node since: its engine takes them back, and the worker's
        messages held for their owner are this node's own."""
        worker_id, now = session.worker_id, self.runtime.now()
        held = [message for job_id in job_ids for message in session.remote_jobs.unclaimed(job_id) or []]
        for job_id in job_ids:
            session.remote_jobs.ended(job_id)  # no longer relayed: this node's own
        self.runtime.call(lambda engine: engine.migrate_jobs(worker_id, job_ids, now))
        for message in held:
            self._from_worker(message["kind"], message)

    def _stop_unclaimed(self, session: WorkerSession, job_id: str) -> None:
        """Stop a copy no live node claimed: when its room comes back, the job runs again by its restart
        policy, and must not run twice. A copy that reported its end meanwhile is only forgotten."""
        held = session.remote_jobs.unclaimed(job_id) or []
        session.remote_jobs.ended(job_id)
        if any(_final(message) for message in held):
            return
        self._stopped[job_id] = session.worker_id
        if len(self._stopped) > MAX_RELAYED:
            del self._stopped[next(iter(self._stopped))]  # the oldest
        log.warning("job stopped: no live node claimed it worker=%s job=%s", session.worker_id, job_id)
        session.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))

    # The engine's job decisions (wired in switchboard.effects)

    def offer(self, decision: OfferJob) -> None:
        if self._copy_waits_here(decision.worker_id, decision.job):
            return
        if self._held_here(decision.worker_id, decision.job):
            self.hub.offer(decision)
        else:
            self._relay(
                "offer", decision.worker_id, decision.job, decision.context, resuming=decision.resuming
            )

    def assign(self, decision: AssignJob) -> None:
        if self._copy_waits_here(decision.worker_id, decision.job):
            return
        if self._held_here(decision.worker_id, decision.job):
            self.hub.assign(decision)
            return
        participant = asdict(decision.participant)
        details = {"participant": participant, "url": self.url}
        self._relay("assign", decision.worker_id, decision.job, decision.context, **details)

    def _copy_waits_here(self, worker_id: str, job: Job) -> bool:
        """Whether the worker, connected here, still runs a copy of the job that it listed by migrate_job
        and that no node claimed yet (see `_offered_again`): the job's room came back on this node."""
        session = self.hub.sessions.get(worker_id)
        if session is None or session.remote_jobs.unclaimed(job.id) is None:
            return False
        self._offered_again(session, job.id, self.node_id)
        return True

    def _held_here(self, worker_id: str, job: Job) -> bool:
        """Whether the worker is connected here. If so, the job is this node's own from now on, even if
        the worker ran it for another node before (its room's node died and the room was restored
        here): its answers and reports about it go to this engine, not to the old owner."""
        session = self.hub.sessions.get(worker_id)
        if session is None:
            return False
        session.remote_jobs.ended(job.id)
        self._ended.pop((worker_id, job.id), None)  # a later copy: an earlier one's end is no news
        return True

    def _relay(self, kind: str, worker_id: str, job: Job, context: JobContext, **details: Any) -> None:
        """To the worker's node: the job as the worker is to be told of it, and this message's details."""
        node = self.remote.node_of(worker_id)
        if node is None or job.ended:
            return  # the worker left meanwhile: the engine's deadlines move the job on
        message = {"kind": kind, "owner": self.node_id, "worker": worker_id, "attempt": job.attempt}
        self.bus.send(node, message | {"job": _encode(job_message(job, context))} | details)

    def terminate(self, decision: TerminateJob) -> None:
        """Stop the worker's copy of a job of this node's engine; the copy's last report (its end) comes
        here, even if the worker ran it for another node before (whose room came back here)."""
        node = self.remote.node_of(decision.worker_id)
        if node is None:
            worker_id, job_id = decision.worker_id, decision.job_id
            session = self.hub.sessions.get(worker_id)
            relayed = session is not None and session.remote_jobs.owner(job_id) is not None
            if session is not None:
                session.remote_jobs.ended(job_id)
            self.hub.terminate(decision)
            if self._ended.pop((worker_id, job_id), None) is not None and not relayed:
                # Its end went to the node it ran for: told to this engine, once this decision is done.
                asyncio.get_running_loop().call_soon(self._tell_copy_ended, worker_id, job_id)
        else:
            message = {"kind": "terminate", "owner": self.node_id, "worker": decision.worker_id}
            self.bus.send(node, message | {"job": decision.job_id})

    # Messages from the other nodes

    def received(self, message: Message) -> None:
        kind = message["kind"]
        if kind in ("worker", "worker_status", "worker_gone", "migrate"):
            if message["node"] != self.node_id:
                self._feed(kind, message)
        elif kind in ("offer", "assign", "terminate"):
            self._to_worker(kind, message)
        elif kind in ("answer", "job_update", "owned"):
            self._from_worker(kind, message)
        elif kind == "copy_ended":
            self._tell_copy_ended(message["worker"], message["job"])
        elif kind == "drain":
            self._drain(message)
        else:
            log.warning("unknown cluster message kind=%r", kind)

    def _feed(self, kind: str, message: Message) -> None:
        worker_id = message["worker"]
        if kind == "worker":  # also announced again, with its last status, after a lease was regained
            self._worker_seen(worker_id, message)
        elif kind == "worker_status":
            self._worker_status(message, worker_id)
        elif kind == "worker_gone":
            self.runtime.call(lambda engine: self.remote.gone(engine, worker_id, self.runtime.now()))
        else:
            self._migrated(message["node"], worker_id, message["jobs"])

    def _worker_seen(self, worker_id: str, state: Message) -> None:
        """Another node's worker, as announced or kept in the hash: registered here if new, its status
        applied."""
        node, now = state["node"], self.runtime.now()
        spec = spec_from_json(state["spec"], node)
        if self.runtime.call(lambda engine: self.remote.registered(engine, node, worker_id, spec, now)):
            name = spec.agent_name
            log.info("remote worker registered worker=%s node=%s agent_name=%r", worker_id, node, name)
        self._worker_status(state, worker_id)

    def _worker_status(self, state: Message, worker_id: str) -> None:
        status = None if state["status"] is None else WorkerStatus(state["status"])
        now = self.runtime.now()
        self.runtime.call(
            lambda engine: self.remote.status(engine, worker_id, status, state["load"], state["jobs"], now)
        )
        worker, drained = self.runtime.engine.workers.get(worker_id), state.get("drained", False)
        if worker is not None and worker_id in self.remote.nodes and worker.drained != drained:
            self._following = True
            try:
                self.runtime.call(
                    lambda e: e.drain_worker(worker_id, now) if drained else e.undrain_worker(worker_id, now)
                )
            finally:
                self._following = False

    def _migrated(self, node: str, worker_id: str, job_ids: list[str]) -> None:
        """Take back this node's jobs among those a worker, reconnected to `node`, still runs."""
        mine = [job_id for job_id in job_ids if job_id in self.runtime.engine.jobs]
        if not mine or worker_id not in self.remote.nodes:
            return
        now = self.runtime.now()
        self.runtime.call(lambda engine: engine.migrate_jobs(worker_id, mine, now))
        self.bus.send(node, {"kind": "owned", "owner": self.node_id, "worker": worker_id, "jobs": mine})

    def drained(self, decision: WorkerDrained) -> None:
        """An operator drained or undrained a worker. This node's worker: its state tells every node. Another
        node's: its node is asked to do it (and then tells every node), so it holds cluster-wide."""
        worker_id, state = decision.worker_id, self._states.get(decision.worker_id)
        if state is not None:
            state["drained"] = decision.drained
            self.bus.put(WORKERS, worker_id, json.dumps(state))
            self.bus.publish({"kind": "worker_status", "worker": worker_id} | state)
        elif not self._following and (node := self.remote.node_of(worker_id)) is not None:
            self.bus.send(node, {"kind": "drain", "worker": worker_id, "drained": decision.drained})

    def _drain(self, message: Message) -> None:
        """Another node's operator call for a worker of this node (idempotent: a drain drains)."""
        worker_id, drained, now = message["worker"], message["drained"], self.runtime.now()
        if worker_id not in self._states:
            log.info("cluster drain for a worker no longer here worker=%s", worker_id)
            return
        self.runtime.call(
            lambda e: e.drain_worker(worker_id, now) if drained else e.undrain_worker(worker_id, now)
        )

    def _to_worker(self, kind: str, message: Message) -> None:
        session = self.hub.sessions.get(message["worker"])
        if session is None:
            # It left this node: the owner hears so (worker_gone) and its deadlines move the job on.
            log.info("cluster %s for a worker no longer here worker=%s", kind, message["worker"])
            return
        if kind == "terminate":
            self._stopped_by(session, message["job"], message.get("owner"))
            session.send(agent.ServerMessage(termination=agent.JobTermination(job_id=message["job"])))
            return
        job = _decode(message["job"])
        if session.remote_jobs.unclaimed(job.id) is not None:
            self._offered_again(session, job.id, message["owner"])
            return
        if not session.remote_jobs.first(kind, job.id, message["attempt"], message["owner"]):
            return  # a copy (a write retried)
        self._ended.pop((session.worker_id, job.id), None)  # a later copy: an earlier one's end is no news
        if kind == "offer":
            self.hub.send_offer(session, job, message["resuming"])
        else:
            participant = AgentParticipant(**message["participant"])
            self.hub.send_assignment(session, job, message["attempt"], participant, message["url"])

    def _stopped_by(self, session: WorkerSession, job_id: str, owner: str | None) -> None:
        """The job's `owner` stops the worker's copy (None: a node of an earlier version, which does not
        say). When that copy ran for a node that is gone (the room came back on `owner`) or for a node not
        known yet, its last report goes to `owner`, which waits for it; if it reported its end already, to
        the gone node, `owner` is told. Not otherwise: a stale terminate (from a node that handed the room
        over) must not take the reports of the copy that the room's live owner runs."""
        if owner is None:
            return
        current = session.remote_jobs.owner(job_id)
        if current is None:  # no copy runs for another node; one that did may have ended
            ended_for = self._ended.pop((session.worker_id, job_id), None)
            if ended_for is not None and ended_for != owner:
                self._send_copy_ended(owner, session.worker_id, job_id)
        elif current == "" or current in self._lost_nodes:
            self._route(session, job_id, owner)
        elif current != owner:
            # Not found lost here (yet: the room's new owner acts as soon as the lease lapses in Redis,
            # this node finds it at its next renewal): Redis says.
            task = asyncio.create_task(self._route_if_gone(session, job_id, owner, current))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _route_if_gone(self, session: WorkerSession, job_id: str, owner: str, current: str) -> None:
        try:
            if await self.registry.node(current) is not None:
                return  # alive: a stale terminate; the copy's reports stay with its owner
        except Exception as exc:  # whatever it is, the reports stay; the new owner waits start_timeout
            log.warning("copy's owner not checked job=%s owner=%s: %r", job_id, current, exc)
            return
        if self.hub.sessions.get(session.worker_id) is not session:
            return
        if session.remote_jobs.owner(job_id) == current:
            self._route(session, job_id, owner)
        elif self._ended.get((session.worker_id, job_id)) == current:  # its end went there meanwhile
            del self._ended[session.worker_id, job_id]
            self._send_copy_ended(owner, session.worker_id, job_id)

    def _send_copy_ended(self, owner: str, worker_id: str, job_id: str) -> None:
        self.bus.send(owner, {"kind": "copy_ended", "worker": worker_id, "job": job_id})

    def _offered_again(self, session: WorkerSession, job_id: str, owner: str) -> None:
        """An offer or assignment of a job the worker still runs, listed by migrate_job and not claimed
        yet: its room came back on `owner`, whose engine, not knowing of that copy, runs the job again.
        Passed on, it would start a second copy on the worker. Instead, `owner` claims the job as any
        owner does (an offer is withdrawn and the running copy taken back; an assignment, the worker having
        answered the offer before it listed the job, stays the attempt the running copy stands for): when
        it is another node, it is sent the listing; when it is this one, its engine takes the copy back
        once the decision being carried out is done (`_take_back_here` calls the engine)."""
        log.info(
            "job offered again while its copy waits for a claim worker=%s job=%s owner=%s",
            session.worker_id,
            job_id,
            owner,
        )
        if owner != self.node_id:
            self.bus.send(owner, self._listing(session, [job_id]))
            return

        def take_back() -> None:  # unless the worker left, or the copy was claimed or ended, meanwhile
            if (
                self.hub.sessions.get(session.worker_id) is session
                and session.remote_jobs.unclaimed(job_id) is not None
            ):
                self._take_back_here(session, [job_id])

        asyncio.get_running_loop().call_soon(take_back)

    def _listing(self, session: WorkerSession, job_ids: list[str]) -> Message:
        """The message that lists jobs the worker runs for the nodes that own them to claim (`_migrated`)."""
        return {"kind": "migrate", "node": self.node_id, "worker": session.worker_id, "jobs": job_ids}

    def _from_worker(self, kind: str, message: Message) -> None:
        worker_id, now = message["worker"], self.runtime.now()
        if kind == "owned":
            self._claimed(worker_id, message["owner"], message["jobs"])
        elif kind == "answer":
            answer = AvailabilityAnswer(
                available=message["available"],
                terminate=message["terminate"],
                identity=message["identity"],
                name=message["name"],
                metadata=message["metadata"],
                attributes=message["attributes"],
            )
            job_id = message["job"]
            if not self.runtime.call(lambda e: e.availability_answer(worker_id, job_id, answer, now)):
                log.info("late or unknown availability answer worker=%s job=%s", worker_id, job_id)
        else:
            update, error, job_id = JobUpdate(message["update"]), message["error"], message["job"]
            if not self.runtime.call(lambda e: e.job_update(worker_id, job_id, update, error, now)):
                log.info("update for a job not held worker=%s job=%s", worker_id, job_id)

    def _tell_copy_ended(self, worker_id: str, job_id: str) -> None:
        now = self.runtime.now()
        if not self.runtime.call(lambda engine: engine.copy_ended(worker_id, job_id, now)):
            log.info("end of a copy not waited for worker=%s job=%s", worker_id, job_id)

    def _claimed(self, worker_id: str, owner: str, job_ids: list[str]) -> None:
        """The owner took back these jobs a worker of this node listed: the worker's messages about them
        held until now go to it, and later ones at once."""
        session = self.hub.sessions.get(worker_id)
        for job_id in job_ids:
            if self._stopped.get(job_id) == worker_id:  # claimed too late: the copy was stopped
                del self._stopped[job_id]
                error = "stopped on its worker: no node claimed it in time"
                failure = {"kind": "job_update", "worker": worker_id, "job": job_id, "error": error}
                self.bus.send(owner, failure | {"update": int(JobUpdate.FAILED)})
            elif session is not None:
                self._route(session, job_id, owner)

    def _route(self, session: WorkerSession, job_id: str, owner: str) -> None:
        """The worker's messages about the job go to `owner` from now on (those held until now too)."""
        held = session.remote_jobs.adopt(job_id, owner)
        for kept in held:
            self.bus.send(owner, kept)
        if any(_final(kept) for kept in held):
            self._copy_ended(session, job_id, owner)

    def node_lost(self, node_id: str) -> None:
        self._lost_nodes.add(node_id)
        now = self.runtime.now()
        lost = self.runtime.call(lambda engine: self.remote.node_lost(engine, node_id, now))
        for worker_id in lost:  # every node does it: the same deletions, harmless
            self.bus.put(WORKERS, worker_id, None)
        self.bus.forget(node_id)
        if lost:
            log.warning("workers of a lost node removed node=%s workers=%s", node_id, ",".join(lost))
