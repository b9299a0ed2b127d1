"""What an operator does and asks in the engine: drain and undrain a worker, and why a job is where it is."""

import pytest

from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import RoomSpec
from switchboard.core.errors import NotFound
from switchboard.core.events import AssignJob
from switchboard.core.explain import WorkerVerdict
from switchboard.core.jobs import JobStatus, JobType
from switchboard.core.workers import JobUpdate, WorkerStatus
from tests.unit.test_dispatch_engine import ACCEPT, REJECT, job_for, make, offers, only, worker

# Drain


def test_a_drained_worker_gets_no_new_job_and_its_running_job_goes_on() -> None:
    e = make()
    w1 = worker(e, "a", 0.0)
    w2 = worker(e, "a", 1.0)
    running = job_for(e, room="r1", now=2.0)
    assert [o.worker_id for o in offers(e)] == [w1]
    e.availability_answer(w1, running.id, ACCEPT, 3.0)
    e.job_update(w1, running.id, JobUpdate.RUNNING, "", 4.0)
    e.take_decisions()

    assert e.drain_worker(w1, 5.0).drained
    e.worker_status(w2, WorkerStatus.AVAILABLE, 0.9, 0, 5.0)  # w1 would be chosen, being less loaded
    e.worker_status(w1, WorkerStatus.AVAILABLE, 0.1, 1, 5.0)  # its reports do not undo the drain
    nxt = job_for(e, room="r2", now=6.0)
    assert [o.worker_id for o in offers(e)] == [w2]
    assert running.status is JobStatus.RUNNING and e.workers[w1].jobs == {running.id}
    assert e.job_update(w1, running.id, JobUpdate.SUCCESS, "", 7.0)
    assert running.status is JobStatus.SUCCEEDED and nxt.worker_id == w2


def test_undrain_offers_the_waiting_jobs_at_once() -> None:
    e = make()
    w = worker(e, "a")
    e.drain_worker(w, 0.0)
    job = job_for(e, now=1.0)
    assert offers(e) == [] and job.status is JobStatus.PENDING
    e.undrain_worker(w, 2.0)
    assert [o.job for o in offers(e)] == [job]
    assert not e.workers[w].drained


def test_draining_takes_back_an_unanswered_offer_for_another_worker() -> None:
    e = make()
    w1 = worker(e, "a", 0.0)
    w2 = worker(e, "a", 1.0)
    job = job_for(e, now=2.0)
    assert [o.worker_id for o in offers(e)] == [w1]
    e.drain_worker(w1, 3.0)
    assert [o.worker_id for o in offers(e)] == [w2]
    assert e.workers[w1].jobs == set() and e.workers[w1].offered_job == ""
    assert job.rejected_by == {} and job.unanswered_by == {}  # taken back, not refused
    assert not e.availability_answer(w1, job.id, ACCEPT, 4.0)  # its late answer does not count
    assert e.availability_answer(w2, job.id, ACCEPT, 4.0)
    assert only(AssignJob, e.take_decisions())[0].worker_id == w2


def test_draining_or_undraining_an_unknown_worker_is_not_found() -> None:
    e = make()
    with pytest.raises(NotFound, match="worker AW_gone is not connected"):
        e.drain_worker("AW_gone", 0.0)
    with pytest.raises(NotFound):
        e.undrain_worker("AW_gone", 0.0)


# Explanations


def test_no_worker_for_the_agent_names_what_the_connected_workers_serve() -> None:
    e = make(pending_timeout=60.0)
    worker(e, "other")
    worker(e, "", job_type=JobType.PUBLISHER)
    worker(e, "x", deployment="eu")
    job = job_for(e, "x", now=10.0)
    [why] = e.explain("r", "", 25.0)
    registered = (
        "workers are registered for agent 'other', agent 'x' (deployment 'eu'), "
        "automatic agents (publisher jobs)"
    )
    assert (why.job_id, why.status, why.since, why.until) == (job.id, JobStatus.PENDING, 10.0, 70.0)
    assert why.summary == f"no worker registered for agent 'x' yet ({registered})"
    e.tick(70.0)
    assert job.error == f"no worker registered for agent 'x' within 60s ({registered})"
    [ended] = e.explain("r", "", 71.0)
    assert (ended.status, ended.summary, ended.until) == (JobStatus.FAILED, job.error, None)


def test_each_worker_says_why_it_has_not_taken_the_job() -> None:
    e = make(pending_timeout=60.0, load_threshold=0.7, availability_timeout=5.0)
    declined, silent, full, loaded, drained = (worker(e, "x", float(n)) for n in range(5))
    e.worker_status(full, WorkerStatus.FULL, 0.5, 3, 0.0)
    e.worker_status(loaded, WorkerStatus.AVAILABLE, 0.75, 2, 0.0)
    e.drain_worker(drained, 0.0)
    job = job_for(e, "x", now=10.0)
    assert [o.worker_id for o in offers(e)] == [declined]
    e.availability_answer(declined, job.id, REJECT, 11.0)
    assert [o.worker_id for o in offers(e)] == [silent]
    e.tick(16.0)  # silent did not answer
    [why] = e.explain("r", "", 20.0)
    assert why.workers == (
        WorkerVerdict(declined, 0.0, "declined it"),
        WorkerVerdict(silent, 0.0, "did not answer within 5s"),
        WorkerVerdict(full, 0.5, "reported itself full"),
        WorkerVerdict(loaded, 0.75, "was over the load threshold 0.7"),
        WorkerVerdict(drained, 0.0, "was drained by an operator"),
    )
    assert why.summary == "no worker took the job for agent 'x' yet: " + ", ".join(map(str, why.workers))
    assert (why.since, why.until) == (10.0, 70.0)
    e.tick(70.0)
    assert job.error == "no worker took the job for agent 'x' within 60s: " + ", ".join(map(str, why.workers))


def test_offered_running_and_restarting_jobs_say_where_they_are() -> None:
    e = make(availability_timeout=5.0, restart_backoff=2.0)
    w = worker(e, "a")
    job = job_for(e, now=1.0)
    [offered] = e.explain("r", "", 1.5)
    assert (offered.summary, offered.since, offered.until) == (
        f"offered to {w}, waiting for its answer",
        1.0,
        6.0,
    )
    e.availability_answer(w, job.id, ACCEPT, 2.0)
    e.job_update(w, job.id, JobUpdate.RUNNING, "", 3.0)
    [running] = e.explain("r", "", 4.0)
    assert (running.status, running.summary, running.since) == (JobStatus.RUNNING, f"running on {w}", 3.0)
    e.job_update(w, job.id, JobUpdate.FAILED, "boom", 5.0)
    [restarting] = e.explain("r", "", 5.5)
    assert restarting.summary == "attempt 2 waits out its restart back-off" and restarting.until == 7.0
    assert restarting.earlier_attempts == (f"attempt 1 on {w}: job failed on worker {w}: boom",)


def test_a_dispatch_without_a_job_says_why_and_unknown_ones_are_not_found() -> None:
    e = make()
    worker(e, "p", job_type=JobType.PUBLISHER)
    e.create_room(RoomSpec(name="r"), 0.0)
    dispatch = e.create_dispatch("r", DispatchSpec(agent_name="p"), 1.0)
    [why] = e.explain("r", dispatch.id, 2.0)
    assert (why.job_id, why.status, why.dispatch_id) == ("", None, dispatch.id)
    assert why.summary.startswith(
        "no job was launched: when the dispatch was created, the workers of agent 'p'"
    )
    with pytest.raises(NotFound, match="dispatch ID not found"):
        e.explain("r", "AD_unknown", 2.0)
    with pytest.raises(NotFound, match="requested room does not exist"):
        e.explain("nowhere", "", 2.0)
