"""A closed room's dispatches stay readable for `history_ttl` seconds and within `history_max_rooms`;
time is passed in."""

import pytest

from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.errors import NotFound
from switchboard.core.jobs import JobStatus
from switchboard.core.workers import AvailabilityAnswer, WorkerSpec


def engine(**settings: object) -> Engine:
    return Engine(EngineSettings(**settings))  # type: ignore[arg-type]


def test_a_deleted_rooms_dispatches_are_listed_as_they_ended_until_the_ttl() -> None:
    e = engine(history_ttl=600)
    dispatch = e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    e.delete_room("r", 10.0)

    assert e.list_dispatches("r") == [], "without the time, only live rooms"
    listed = e.list_dispatches("r", now=11.0)
    assert dispatch in listed and len(listed) == 2  # with the implicit automatic dispatch
    [job] = dispatch.jobs
    assert job.status is JobStatus.FAILED and job.error == "terminated: room closed (deleted by API request)"
    assert dispatch.deleted_at == 10.0
    assert e.list_dispatches("r", dispatch.id, now=11.0) == [dispatch]
    assert e.list_dispatches("r", "AD_other", now=11.0) == []
    found = e.find_room("r", 11.0)
    assert found is not None and found.name == "r" and not found.participants
    with pytest.raises(NotFound):  # the closed room cannot be changed
        e.delete_dispatch("r", dispatch.id, 11.0)
    with pytest.raises(NotFound):
        e.room("r")

    assert e.list_dispatches("r", now=609.9) == listed
    assert e.next_deadline() == 610.0
    assert e.list_dispatches("r", now=610.0) == []
    e.tick(610.0)
    assert len(e.history) == 0 and e.next_deadline() is None


def test_every_attempt_and_reason_is_kept_and_timeouts_close_rooms_into_history_too() -> None:
    e = engine(history_ttl=60, empty_timeout=20, max_job_restarts=1, restart_backoff=0.0)
    dispatch = e.create_dispatch(
        "r", DispatchSpec(agent_name="a", restart_policy=RestartPolicy.ON_FAILURE), 0.0
    )
    worker = e.register_worker(WorkerSpec(agent_name="a"), 0.0).id
    [job] = dispatch.jobs
    e.availability_answer(worker, job.id, AvailabilityAnswer(available=True), 1.0)
    e.worker_disconnected(worker, 2.0)
    e.tick(7.5)  # the reconnect grace is over: the job waits for a second attempt
    e.tick(20.0)  # nobody joined: the room closes
    assert "r" not in e.rooms
    [listed] = [d for d in e.list_dispatches("r", now=21.0) if d.agent_name == "a"]
    [attempt] = listed.jobs[0].attempts
    assert attempt.error == f"worker {worker} disconnected"
    assert listed.jobs[0].error == "terminated: room closed (empty timeout)"


def test_a_room_created_again_is_listed_live_and_its_next_closing_replaces_the_old_one() -> None:
    e = engine()
    first = e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    e.delete_room("r", 1.0)
    second = e.create_dispatch("r", DispatchSpec(agent_name="b"), 2.0)
    assert second in e.list_dispatches("r", now=3.0) and first not in e.list_dispatches("r", now=3.0)
    e.delete_room("r", 4.0)
    assert second in e.list_dispatches("r", now=5.0) and first not in e.list_dispatches("r", now=5.0)
    assert len(e.history) == 1


def test_history_is_bounded_in_count_oldest_closure_first() -> None:
    e = engine(history_max_rooms=3)
    for n in range(5):
        e.create_room(RoomSpec(name=f"r{n}"), float(n))
        e.delete_room(f"r{n}", float(n))
    assert len(e.history) == 3
    assert [bool(e.list_dispatches(f"r{n}", now=10.0)) for n in range(5)] == [False, False, True, True, True]


def test_a_zero_ttl_keeps_no_history() -> None:
    e = engine(history_ttl=0)
    e.create_room(RoomSpec(name="r"), 0.0)
    e.delete_room("r", 1.0)
    assert len(e.history) == 0 and e.list_dispatches("r", now=1.0) == []
