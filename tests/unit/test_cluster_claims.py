"""A reconnected worker's jobs of other nodes (migrate_job), on the worker's node: its messages about them
wait for the owner's claim, and a job no node claims is stopped. ClusterWorkers with a real engine and
stand-ins for the Redis bus, the node registry and the worker's connection (the integration tests in
tests/integration/test_cluster_dispatch.py run the same with real nodes and workers)."""

import asyncio
import base64
from types import SimpleNamespace
from typing import Any

import pytest
from livekit.protocol import agent, models

from switchboard.cluster.directory import RelayedJobs
from switchboard.cluster.lease import Lease
from switchboard.cluster.workers import CLAIM_LEASES, ClusterWorkers
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine
from switchboard.core.events import JobContext, OfferJob, TerminateJob
from switchboard.core.jobs import Job, JobType
from switchboard.core.rooms import Room
from switchboard.runtime import Runtime

LEASE = 0.05
WORKER = "AW_reconnected"
JOB = "AJ_elsewhere"


class Bus:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, message: dict[str, Any]) -> None:
        self.published.append(message)

    def send(self, node: str, message: dict[str, Any]) -> None:
        self.sent.append((node, message))

    def put(self, key: str, field: str, value: str | None) -> None:
        pass

    def forget(self, node: str) -> None:
        pass


class Registry:
    node_id = "ND_here"
    url = "http://127.0.0.1:7880"

    def __init__(self) -> None:
        self.lease = Lease(LEASE)
        self.cut = False
        """Whether this node is cut from Redis (its lease not held)."""
        self.gone: set[str] = set()

    def holds_lease(self) -> bool:
        return not self.cut

    async def node(self, node_id: str) -> object | None:
        """ND_dead died, and the nodes in `gone`; this node found none of them lost yet."""
        return None if node_id == "ND_dead" or node_id in self.gone else object()

    def on_node_lost(self, listener: Any) -> None:
        pass

    def on_lease_regained(self, listener: Any) -> None:
        pass


class Session:
    def __init__(self) -> None:
        self.worker_id = WORKER
        self.remote_jobs = RelayedJobs()
        self.sent: list[agent.ServerMessage] = []

    def send(self, message: agent.ServerMessage) -> None:
        self.sent.append(message)

    def terminate(self, decision: TerminateJob) -> None:
        """The hub's, for a decision of this node's engine about this worker."""
        self.send(agent.ServerMessage(termination=agent.JobTermination(job_id=decision.job_id)))

    def offered(self, session: "Session", job: agent.Job, resuming: bool) -> None:
        """The hub's, for an offer relayed from the job's owner."""
        self.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job, resuming=resuming)))

    def terminated(self) -> list[str]:
        return [m.termination.job_id for m in self.sent if m.HasField("termination")]


@pytest.fixture
def node() -> tuple[ClusterWorkers, Bus, Registry, Session]:
    bus, registry, session = Bus(), Registry(), Session()
    hub = SimpleNamespace(
        sessions={WORKER: session}, relay=None, terminate=session.terminate, send_offer=session.offered
    )
    workers = ClusterWorkers(Runtime(Engine()), hub, bus, registry)  # type: ignore[arg-type]
    return workers, bus, registry, session


def listed(workers: ClusterWorkers, session: Session) -> None:
    message = agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[JOB]))
    assert workers.intercept(session, message)  # type: ignore[arg-type]


def report(workers: ClusterWorkers, session: Session, status: int) -> None:
    message = agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id=JOB, status=status))
    assert workers.intercept(session, message)  # type: ignore[arg-type]


def claimed(workers: ClusterWorkers, owner: str) -> None:
    workers.received({"kind": "owned", "owner": owner, "worker": WORKER, "jobs": [JOB]})


async def after_leases(count: float) -> None:
    """Let the node's claim checks (loop timers, one per lease) that fall within `count` leases run: a
    sleep on the same loop ends after every timer due before it, however slow the machine."""
    await asyncio.sleep(LEASE * count + 0.02)


async def test_reports_before_the_owners_claim_reach_it_in_order_after_the_claim(node: Any) -> None:
    workers, bus, _, session = node
    listed(workers, session)
    assert [m["kind"] for m in bus.published] == ["migrate"] and bus.published[0]["jobs"] == [JOB]
    report(workers, session, agent.JS_RUNNING)
    report(workers, session, agent.JS_SUCCESS)
    assert bus.sent == [], "the owner is not known yet"
    claimed(workers, "ND_owner")
    assert [(node, m["kind"], m["update"]) for node, m in bus.sent] == [
        ("ND_owner", "job_update", 1),
        ("ND_owner", "job_update", 2),
    ]
    await after_leases(CLAIM_LEASES + 1)
    assert session.terminated() == [], "a claimed job is not stopped"
    assert len(bus.published) == 1, "nor listed again"


async def test_a_job_no_node_claims_is_listed_again_then_stopped_and_a_late_claim_hears_it_failed(
    node: Any,
) -> None:
    workers, bus, _, session = node
    listed(workers, session)
    await after_leases(1)
    assert [m["jobs"] for m in bus.published] == [[JOB], [JOB]], "listed again after a lease"
    assert session.terminated() == []
    await after_leases(CLAIM_LEASES)
    assert session.terminated() == [JOB]
    assert len(bus.published) == CLAIM_LEASES
    claimed(workers, "ND_late")
    [(owner, failure)] = bus.sent
    assert owner == "ND_late" and failure["update"] == 3 and "no node claimed it in time" in failure["error"]


async def test_a_job_that_ended_before_anyone_claimed_it_is_not_stopped(node: Any) -> None:
    workers, _, _, session = node
    listed(workers, session)
    report(workers, session, agent.JS_FAILED)
    await after_leases(CLAIM_LEASES + 1)
    assert session.terminated() == []


async def test_while_cut_from_redis_the_node_waits_for_a_late_claim(node: Any) -> None:
    workers, bus, registry, session = node
    registry.cut = True
    listed(workers, session)
    await after_leases(CLAIM_LEASES + 2)
    assert session.terminated() == [] and len(bus.published) == 1
    claimed(workers, "ND_owner")
    report(workers, session, agent.JS_RUNNING)
    assert [node for node, _ in bus.sent] == ["ND_owner"]


async def test_an_offer_of_a_job_whose_copy_waits_for_a_claim_is_answered_with_the_listing(node: Any) -> None:
    """The job's room came back on another node, whose engine offers the job again before it heard the
    listing: the worker must not be asked (it would start a second copy); that node is sent the listing,
    claims the running copy, and gets the worker's reports."""
    workers, bus, _, session = node
    listed(workers, session)
    report(workers, session, agent.JS_RUNNING)
    job = agent.Job(id=JOB, type=agent.JT_ROOM, room=models.Room(name="r"))
    encoded = base64.b64encode(job.SerializeToString()).decode()  # as a node relays a job
    offer = {"kind": "offer", "owner": "ND_restored", "worker": WORKER, "attempt": 2, "resuming": False}
    workers.received(offer | {"job": encoded})
    assert session.sent == [], "no availability request for a job the worker already runs"
    [(owner, listing)] = bus.sent
    assert owner == "ND_restored"
    assert listing == {"kind": "migrate", "node": "ND_here", "worker": WORKER, "jobs": [JOB]}
    claimed(workers, "ND_restored")
    assert [(node, m["kind"], m["update"]) for node, m in bus.sent[1:]] == [("ND_restored", "job_update", 1)]
    await after_leases(CLAIM_LEASES + 1)
    assert session.terminated() == [], "the claimed copy runs on"
    assert len(bus.published) == 1, "and is not listed again"


async def test_an_offer_here_of_a_job_whose_copy_waits_for_a_claim_takes_the_copy_back(node: Any) -> None:
    """The job's room came back on this very node (the worker's), whose engine offers the job again before
    the listing is checked: the worker is not asked (the stand-in hub has no `offer`: passing it on would
    fail), this node takes the running copy back, and nothing goes to other nodes."""
    workers, bus, _, session = node
    listed(workers, session)
    report(workers, session, agent.JS_RUNNING)
    job = Job(id=JOB, dispatch_id="AD_1", room="r", type=JobType.ROOM, agent_name="a", created_at=0.0)
    context = JobContext(Room("r", "RM_1", 0.0, 300, 20), DispatchSpec("a"), None)
    workers.offer(OfferJob(WORKER, job, resuming=True, context=context))
    await asyncio.sleep(0)  # the take-back runs once the decision is carried out
    assert session.sent == [] and bus.sent == []
    assert session.remote_jobs.unclaimed(JOB) is None, "this node's own now"
    await after_leases(CLAIM_LEASES + 1)
    assert session.terminated() == [] and len(bus.published) == 1, "neither stopped nor listed again"


def relayed_from(session: Session, owner: str) -> None:
    """The worker runs JOB for `owner`: it was assigned through this node."""
    assert session.remote_jobs.first("assign", JOB, 1, owner)


async def test_a_copy_stopped_by_the_node_its_room_came_back_on_reports_its_end_there(node: Any) -> None:
    """The room's node died; the room came back on another node, which stops the copy (its agent joined
    the dead node): the copy's last report goes to that node, which waits for it, not to the dead one."""
    workers, bus, _, session = node
    relayed_from(session, "ND_dead")
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    assert session.terminated() == [JOB]
    await asyncio.sleep(0.01)  # this node has not found ND_dead lost yet: Redis is asked
    report(workers, session, agent.JS_FAILED)
    assert [(node, m["kind"], m["update"]) for node, m in bus.sent] == [("ND_restored", "job_update", 3)]
    assert session.remote_jobs.owner(JOB) is None, "its end: nothing more is relayed"


async def test_a_copy_stopped_by_this_nodes_engine_reports_its_end_here(node: Any) -> None:
    """The room came back on the worker's own node: the copy's last report is this node's engine's."""
    workers, bus, _, session = node
    relayed_from(session, "ND_dead")
    workers.terminate(TerminateJob(WORKER, JOB, "node lost"))
    assert session.terminated() == [JOB]
    final = agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id=JOB, status=agent.JS_FAILED))
    assert not workers.intercept(session, final), "not relayed: the session hands it to this engine"  # type: ignore[arg-type]
    assert bus.sent == []


async def test_a_stale_terminate_does_not_take_the_reports_of_a_copy_a_live_node_runs(node: Any) -> None:
    """A node that handed the room over (its lease lapsed) sends its terminate late, once Redis is back:
    the copy the room's live owner runs still reports to that owner."""
    workers, bus, _, session = node
    relayed_from(session, "ND_live")
    workers.received({"kind": "terminate", "owner": "ND_stale", "worker": WORKER, "job": JOB})
    assert session.terminated() == [JOB]
    await asyncio.sleep(0.01)  # Redis is asked whether ND_live is gone: it is not
    report(workers, session, agent.JS_FAILED)
    assert [node for node, _ in bus.sent] == ["ND_live"]


async def test_a_terminate_from_a_node_of_an_earlier_version_is_carried_out(node: Any) -> None:
    """Without the owner it names since: the copy is stopped, its reports go where they went."""
    workers, bus, _, session = node
    relayed_from(session, "ND_dead")
    workers.received({"kind": "terminate", "worker": WORKER, "job": JOB})
    assert session.terminated() == [JOB]
    report(workers, session, agent.JS_FAILED)
    assert [node for node, _ in bus.sent] == ["ND_dead"]


async def test_a_copy_whose_end_went_to_the_dead_node_is_told_ended_to_the_node_that_stops_it(
    node: Any,
) -> None:
    """The copy ended by itself and reported it to the node it ran for, which died; the room came back
    on another node, which stops the copy and waits for its end: it is told the copy ended already."""
    workers, bus, _, session = node
    relayed_from(session, "ND_dead")
    report(workers, session, agent.JS_FAILED)
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    assert bus.sent[1:] == [("ND_restored", {"kind": "copy_ended", "worker": WORKER, "job": JOB})]
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    assert len(bus.sent) == 2, "told once"


async def test_a_copy_whose_end_went_to_the_dead_node_is_told_ended_to_this_nodes_engine(node: Any) -> None:
    workers, _, _, session = node
    told: list[tuple[str, str]] = []

    def copy_ended(worker_id: str, job_id: str, now: float) -> bool:
        told.append((worker_id, job_id))
        return True

    workers.runtime.engine.copy_ended = copy_ended  # type: ignore[method-assign]
    relayed_from(session, "ND_dead")
    report(workers, session, agent.JS_SUCCESS)
    workers.terminate(TerminateJob(WORKER, JOB, "node lost"))
    assert told == [], "not while the decision is carried out"
    await asyncio.sleep(0)
    assert told == [(WORKER, JOB)]


async def test_a_copy_whose_end_its_owner_heard_is_not_told_ended_again(node: Any) -> None:
    workers, bus, _, session = node
    relayed_from(session, "ND_owner")
    report(workers, session, agent.JS_SUCCESS)
    workers.received({"kind": "terminate", "owner": "ND_owner", "worker": WORKER, "job": JOB})
    assert [m["kind"] for _, m in bus.sent] == ["job_update"]


def relayed_offer(workers: ClusterWorkers, owner: str, attempt: int) -> None:
    job = agent.Job(id=JOB, type=agent.JT_ROOM, room=models.Room(name="r"))
    encoded = base64.b64encode(job.SerializeToString()).decode()
    offer = {"kind": "offer", "owner": owner, "worker": WORKER, "attempt": attempt, "resuming": attempt > 1}
    workers.received(offer | {"job": encoded})


async def test_a_terminate_finds_the_copys_owner_gone_in_redis_before_this_nodes_own_look(node: Any) -> None:
    """The room's new owner acts as soon as the old one's lease lapses in Redis; this node's last look may
    predate that: Redis is asked, and the copy's last report goes to the new owner."""
    workers, bus, registry, session = node
    relayed_from(session, "ND_owner")
    registry.gone.add("ND_owner")
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    await asyncio.sleep(0.01)
    report(workers, session, agent.JS_FAILED)
    assert [node for node, _ in bus.sent] == ["ND_restored"]


async def test_the_end_of_an_earlier_copy_is_not_taken_for_a_later_ones(node: Any) -> None:
    """Attempt 1 ended (reported to its owner), attempt 2 was offered to the same worker by that owner,
    which then died: the node that stops attempt 2's copy waits for its end, and is not told it ended."""
    workers, bus, registry, session = node
    relayed_from(session, "ND_owner")
    report(workers, session, agent.JS_FAILED)
    relayed_offer(workers, "ND_owner", 2)
    assert [m.WhichOneof("message") for m in session.sent] == ["availability"]
    registry.gone.add("ND_owner")
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    await asyncio.sleep(0.01)
    assert [m["kind"] for _, m in bus.sent] == ["job_update"], "no copy_ended"
    report(workers, session, agent.JS_SUCCESS)
    assert [(node, m["kind"]) for node, m in bus.sent[1:]] == [("ND_restored", "job_update")]


async def test_a_terminate_from_the_new_owner_of_a_node_found_lost_reroutes_at_once(node: Any) -> None:
    workers, bus, _, session = node
    relayed_from(session, "ND_owner")
    workers.node_lost("ND_owner")
    workers.received({"kind": "terminate", "owner": "ND_restored", "worker": WORKER, "job": JOB})
    report(workers, session, agent.JS_FAILED)
    assert [node for node, _ in bus.sent] == ["ND_restored"]
