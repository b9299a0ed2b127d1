"""Singleton agents in the engine: at most one live dispatch of the agent per room, whatever the path
(CreateDispatch, CreateRoom's agents, a participant's token), counting references for DeleteDispatch."""

import pytest

from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, RoomSpec
from switchboard.core.errors import NotFound
from switchboard.core.events import DispatchReferenced, JobEnded, TerminateJob
from switchboard.core.jobs import JobStatus
from switchboard.core.workers import JobUpdate
from tests.unit.test_dispatch_engine import ACCEPT, make, only, person, worker

SOLO = DispatchSpec(agent_name="solo")


def singleton_engine() -> Engine:
    return make(singleton_agents=frozenset({"solo"}), empty_timeout=10_000)


def test_three_requests_share_one_dispatch_and_its_agent_goes_with_the_last_reference() -> None:
    e = singleton_engine()
    w = worker(e, "solo")
    first = e.create_dispatch("r", SOLO, 0.0)
    assert e.create_dispatch("r", SOLO, 1.0) is first
    assert e.create_dispatch("r", DispatchSpec(agent_name="solo", metadata="other"), 2.0) is first
    [job] = first.jobs
    assert first.references == 3 and [d.agent_name for d in e.list_dispatches("r")] == ["", "solo"]
    e.availability_answer(w, job.id, ACCEPT, 3.0)
    e.job_update(w, job.id, JobUpdate.RUNNING, "", 3.0)
    e.take_decisions()

    for now, left in ((4.0, 2), (5.0, 1)):
        assert e.delete_dispatch("r", first.id, now) is first
        assert first.references == left and first.deleted_at is None and job.status is JobStatus.RUNNING
    # Only the count changes (the store keeps it); the agent stays.
    assert e.take_decisions() == [DispatchReferenced("r", first.id, 2), DispatchReferenced("r", first.id, 1)]
    e.delete_dispatch("r", first.id, 6.0)
    assert first.deleted_at == 6.0 and job.status is JobStatus.SUCCEEDED
    assert only(TerminateJob, e.take_decisions()) == [TerminateJob(w, job.id, "terminated: dispatch deleted")]
    with pytest.raises(NotFound):
        e.delete_dispatch("r", first.id, 7.0)


def test_every_dispatch_path_adds_to_the_one_dispatch() -> None:
    e = singleton_engine()
    room = e.create_room(RoomSpec(name="r", agents=(SOLO, SOLO)), 0.0)
    [dispatch] = room.dispatches.values()
    assert dispatch.references == 2
    e.join(RoomSpec(name="r", agents=(SOLO,)), person("alice"), 1.0)  # a token asking for it again
    assert e.create_dispatch("r", SOLO, 2.0) is dispatch
    assert list(room.dispatches.values()) == [dispatch] and len(dispatch.jobs) == 1
    assert dispatch.references == 3  # the token's room already had it: tokens never add a reference


def test_once_its_job_ended_a_new_request_brings_a_new_agent() -> None:
    e = singleton_engine()
    w = worker(e, "solo")
    first = e.create_dispatch("r", SOLO, 0.0)
    [job] = first.jobs
    e.availability_answer(w, job.id, ACCEPT, 1.0)
    e.job_update(w, job.id, JobUpdate.SUCCESS, "", 2.0)
    assert only(JobEnded, e.take_decisions()) == [JobEnded(job)] and not first.live
    second = e.create_dispatch("r", SOLO, 3.0)
    assert second is not first and second.references == 1 and len(second.jobs) == 1


def test_other_agents_and_other_rooms_are_not_shared() -> None:
    e = singleton_engine()
    here = e.create_dispatch("r", SOLO, 0.0)
    assert e.create_dispatch("elsewhere", SOLO, 0.0) is not here
    many = DispatchSpec(agent_name="many")
    assert e.create_dispatch("r", many, 0.0) is not e.create_dispatch("r", many, 0.0)
