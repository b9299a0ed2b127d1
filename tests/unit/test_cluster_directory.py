"""Dispatch across nodes, without I/O: the owner node's engine with other nodes' workers in it (as their
announcements put them there), and the worker node's memory of the offers it relayed."""

import pytest

from switchboard.cluster import directory
from switchboard.cluster.directory import RelayedJobs, RemoteWorkers, spec_from_json, spec_to_json
from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, EngineSettings
from switchboard.core.events import AssignJob, JobEnded, OfferJob
from switchboard.core.jobs import JobStatus, JobType
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerSpec, WorkerStatus

SETTINGS = EngineSettings(restart_backoff=5.0, empty_timeout=10_000)
SPEC = WorkerSpec(agent_name="helper", job_type=JobType.ROOM, version="1")
ON_FAILURE = DispatchSpec(agent_name="helper", restart_policy=RestartPolicy.ON_FAILURE)


def owner() -> tuple[Engine, RemoteWorkers]:
    """Node B's engine and its view of the other nodes' workers."""
    return Engine(SETTINGS), RemoteWorkers("ND_B")


def announce(engine: Engine, remote: RemoteWorkers, node: str, worker_id: str, now: float = 0.0) -> bool:
    """What node B does with another node's announcement (it travels as JSON)."""
    spec = spec_from_json(spec_to_json(SPEC), node)
    return remote.registered(engine, node, worker_id, spec, now)


def offers(engine: Engine) -> list[OfferJob]:
    return [d for d in engine.take_decisions() if isinstance(d, OfferJob)]


def test_a_job_of_the_owner_is_offered_to_and_assigned_to_a_worker_of_another_node() -> None:
    engine, remote = owner()
    assert announce(engine, remote, "ND_A", "AW_far")
    assert engine.workers["AW_far"].spec.node == "ND_A" and remote.node_of("AW_far") == "ND_A"
    engine.create_dispatch("room", ON_FAILURE, 1.0)
    [offer] = offers(engine)
    assert offer.worker_id == "AW_far"
    assert engine.availability_answer("AW_far", offer.job.id, AvailabilityAnswer(available=True), 1.1)
    [assign] = [d for d in engine.take_decisions() if isinstance(d, AssignJob)]
    assert assign.worker_id == "AW_far" and assign.job.status is JobStatus.ASSIGNED


def test_announcements_that_come_twice_change_nothing_the_second_time() -> None:
    engine, remote = owner()
    assert announce(engine, remote, "ND_A", "AW_far")
    assert not announce(engine, remote, "ND_A", "AW_far"), "snapshot then feed: the same worker"
    assert not announce(engine, remote, "ND_B", "AW_mine"), "its own node's workers are registered by it"
    assert list(engine.workers) == ["AW_far"]
    remote.status(engine, "AW_unknown", WorkerStatus.FULL, 1.0, 3, 1.0)  # not held: ignored
    remote.status(engine, "AW_far", WorkerStatus.FULL, 0.5, 2, 1.0)
    assert engine.workers["AW_far"].status is WorkerStatus.FULL and engine.workers["AW_far"].load == 0.5
    remote.gone(engine, "AW_far", 2.0)
    remote.gone(engine, "AW_far", 2.0)
    assert engine.workers == {} and remote.nodes == {}


def test_a_worker_that_left_its_node_keeps_its_jobs_for_the_reconnect_grace() -> None:
    engine, remote = owner()
    announce(engine, remote, "ND_A", "AW_far")
    engine.create_dispatch("room", ON_FAILURE, 1.0)
    [offer] = offers(engine)
    engine.availability_answer("AW_far", offer.job.id, AvailabilityAnswer(available=True), 1.0)
    remote.gone(engine, "AW_far", 2.0)
    assert offer.job.orphaned_at == 2.0, "it may reconnect to any node and take the job back"


def test_a_lost_nodes_jobs_restart_at_once_on_another_nodes_worker_with_the_reason() -> None:
    engine, remote = owner()
    announce(engine, remote, "ND_A", "AW_doomed")
    engine.create_dispatch("room", ON_FAILURE, 1.0)
    [offer] = offers(engine)
    job = offer.job
    engine.availability_answer("AW_doomed", job.id, AvailabilityAnswer(available=True), 1.0)
    engine.job_update("AW_doomed", job.id, JobUpdate.RUNNING, "", 1.5)
    announce(engine, remote, "ND_C", "AW_spare", 2.0)
    engine.take_decisions()

    assert remote.node_lost(engine, "ND_A", 3.0) == ["AW_doomed"]
    assert remote.node_lost(engine, "ND_A", 3.0) == [], "every node hears of the loss; once is enough"
    [again] = offers(engine)  # at once: the restart back-off is for jobs that crash
    assert again.worker_id == "AW_spare" and again.job is job and again.resuming
    assert job.attempts[-1].error == "worker AW_doomed's node ND_A was lost"
    assert job.attempts[-1].worker_id == "AW_doomed"


def test_a_lost_nodes_job_ends_with_the_reason_when_its_policy_says_not_to_retry() -> None:
    engine, remote = owner()
    announce(engine, remote, "ND_A", "AW_doomed")
    engine.create_dispatch("room", DispatchSpec(agent_name="helper", restart_policy=RestartPolicy.NEVER), 1.0)
    [offer] = offers(engine)
    engine.availability_answer("AW_doomed", offer.job.id, AvailabilityAnswer(available=True), 1.0)
    remote.node_lost(engine, "ND_A", 3.0)
    [ended] = [d for d in engine.take_decisions() if isinstance(d, JobEnded)]
    assert ended.job.status is JobStatus.FAILED
    assert ended.job.error == "worker AW_doomed's node ND_A was lost"


def test_the_rooms_node_asks_its_own_workers_first_and_another_nodes_when_they_cannot_take_it() -> None:
    engine, remote = owner()
    announce(engine, remote, "ND_A", "AW_far", 0.0)  # registered first, and idle
    local = engine.register_worker(SPEC, 1.0)
    for room in ("r1", "r2"):  # a burst: the local worker's estimated load grows, and it still comes first
        engine.create_dispatch(room, ON_FAILURE, 2.0)
        [offer] = offers(engine)
        assert offer.worker_id == local.id
        engine.availability_answer(local.id, offer.job.id, AvailabilityAnswer(available=True), 2.0)
        engine.take_decisions()
    engine.create_dispatch("r3", ON_FAILURE, 2.1)
    [offer] = offers(engine)
    engine.availability_answer(local.id, offer.job.id, AvailabilityAnswer(available=False), 2.2)
    [again] = offers(engine)
    assert (again.job.id, again.worker_id) == (offer.job.id, "AW_far"), "refused here: the other node's"


def test_the_worker_node_relays_each_offer_and_assignment_once_per_attempt() -> None:
    relayed = RelayedJobs()
    assert not relayed and relayed.owner("AJ_1") is None
    assert relayed.first("offer", "AJ_1", 1, "ND_B")
    assert not relayed.first("offer", "AJ_1", 1, "ND_B"), "a message written twice is passed once"
    assert relayed.owner("AJ_1") == "ND_B"
    assert relayed.first("assign", "AJ_1", 1, "ND_B") and not relayed.first("assign", "AJ_1", 1, "ND_B")
    assert relayed.first("offer", "AJ_1", 2, "ND_B"), "a restarted job's next attempt is news"
    relayed.ended("AJ_1")
    assert relayed.owner("AJ_1") is None


def test_a_migrated_jobs_owner_is_unknown_until_it_claims_the_job() -> None:
    relayed = RelayedJobs()
    relayed.adopt("AJ_1", "")
    assert relayed.owner("AJ_1") == ""
    relayed.adopt("AJ_1", "ND_B")
    assert relayed.owner("AJ_1") == "ND_B"


def test_a_migrated_jobs_messages_wait_for_its_owner_in_order_and_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(directory, "MAX_HELD", 2)
    relayed = RelayedJobs()
    assert not relayed.hold("AJ_1", {"n": 0}), "a job not listed by migrate_job holds nothing"
    relayed.adopt("AJ_1", "")
    assert relayed.hold("AJ_1", {"n": 1}) and relayed.hold("AJ_1", {"n": 2})
    assert not relayed.hold("AJ_1", {"n": 3}), "bounded"
    assert relayed.adopt("AJ_1", "ND_B") == [{"n": 1}, {"n": 2}]
    assert not relayed.hold("AJ_1", {"n": 4}), "its owner known: sent at once, never held"
    assert relayed.adopt("AJ_1", "ND_B") == [], "a claim written twice sends them once"


def test_relayed_jobs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "MAX_RELAYED", 3)
    relayed = RelayedJobs()
    for n in range(5):
        relayed.first("offer", f"AJ_{n}", 1, "ND_B")
    assert [relayed.owner(f"AJ_{n}") for n in range(5)] == [None, None, "ND_B", "ND_B", "ND_B"]
