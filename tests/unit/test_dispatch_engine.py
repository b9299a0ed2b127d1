"""Workers and jobs in the engine: offers, answers, selection, restarts, reconnects; time is passed in."""

from dataclasses import replace
from typing import Any, TypeVar

import pytest

from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.errors import FailedPrecondition, Unavailable
from switchboard.core.events import (
    AgentParticipant,
    AssignJob,
    Decision,
    DisconnectCause,
    DisconnectParticipant,
    DispatchDeleted,
    JobChanged,
    JobContext,
    JobEnded,
    JobQueued,
    JobStarted,
    OfferJob,
    ParticipantJoined,
    ParticipantLeft,
    TerminateJob,
)
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.rooms import AGENT, EGRESS, Participant, Room, Track
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerSpec, WorkerStatus

SETTINGS = EngineSettings(
    pending_timeout=60.0,
    availability_timeout=5.0,
    start_timeout=10.0,
    reconnect_grace=5.0,
    max_job_restarts=3,
    restart_backoff=0.0,  # restarts at once here; the back-off has tests of its own
    empty_timeout=10_000,
)
ACCEPT = AvailabilityAnswer(available=True)
REJECT = AvailabilityAnswer(available=False)
NEVER = RestartPolicy.NEVER

D = TypeVar("D")


def make(**overrides: Any) -> Engine:
    return Engine(replace(SETTINGS, **overrides))


def only(kind: type[D], decisions: list[Decision]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def offers(e: Engine) -> list[OfferJob]:
    return only(OfferJob, e.take_decisions())


# What a worker is told besides the job follows from the job, so decisions compare without it; the
# contexts themselves are checked by test_offers_and_assignments_carry_what_the_worker_is_told.
UNCOMPARED = JobContext(
    Room(name="", sid="", created_at=0.0, empty_timeout=0, departure_timeout=0), DispatchSpec(), None
)


def offer(worker_id: str, job: Job, *, resuming: bool) -> OfferJob:
    return OfferJob(worker_id, job, resuming=resuming, context=UNCOMPARED)


def assign(worker_id: str, job: Job, participant: AgentParticipant) -> AssignJob:
    return AssignJob(worker_id, job, participant, context=UNCOMPARED)


def worker(
    e: Engine,
    agent: str = "a",
    now: float = 0.0,
    job_type: JobType = JobType.ROOM,
    deployment: str = "",
) -> str:
    return e.register_worker(WorkerSpec(agent_name=agent, job_type=job_type, deployment=deployment), now).id


def job_for(
    e: Engine,
    agent: str = "a",
    *,
    room: str = "r",
    now: float = 0.0,
    policy: RestartPolicy = RestartPolicy.ON_FAILURE,
    deployment: str = "",
) -> Job:
    """A dispatch of `agent` to `room` and its room job; a new room gets no implicit automatic dispatch."""
    spec = DispatchSpec(agent_name=agent, restart_policy=policy, deployment=deployment)
    if room in e.rooms:
        dispatch = e.create_dispatch(room, spec, now)
    else:
        [dispatch] = e.create_room(RoomSpec(name=room, agents=(spec,)), now).dispatches.values()
    [job] = dispatch.jobs
    return job


def running(
    e: Engine, agent: str = "a", now: float = 0.0, policy: RestartPolicy = RestartPolicy.ON_FAILURE
) -> tuple[str, Job]:
    """A fresh worker of `agent` running a fresh job."""
    w = worker(e, agent, now)
    job = job_for(e, agent, room=f"room-{len(e.rooms)}", now=now, policy=policy)
    assert job.worker_id == w and job.status is JobStatus.OFFERED
    assert e.availability_answer(w, job.id, ACCEPT, now)
    assert e.job_update(w, job.id, JobUpdate.RUNNING, "", now)
    assert job.status is JobStatus.RUNNING
    e.take_decisions()
    return w, job


def person(identity: str, kind: str = "standard") -> Participant:
    return Participant(identity=identity, sid=f"PA_{identity}", joined_at=0.0, kind=kind)


# Which worker may take which job


def test_the_implicit_automatic_job_goes_only_to_unnamed_workers() -> None:
    e = make()
    room = e.create_room(RoomSpec(name="r"), 0.0)
    [automatic] = next(iter(room.dispatches.values())).jobs
    e.take_decisions()
    worker(e, "a", 1.0)
    worker(e, "a", 1.0, deployment="prod")
    assert offers(e) == [] and automatic.status is JobStatus.PENDING
    unnamed = worker(e, "", 2.0)
    assert offers(e) == [offer(unnamed, automatic, resuming=False)]


def test_a_named_job_goes_only_to_workers_of_that_name() -> None:
    e = make()
    unnamed = worker(e, "")
    worker(e, "b")
    worker(e, "A")
    # The room is created with the implicit automatic dispatch as well.
    dispatch = e.create_dispatch("r", DispatchSpec(agent_name="a"), 1.0)
    [named] = dispatch.jobs
    [automatic] = offers(e)
    assert automatic.worker_id == unnamed and automatic.job.agent_name == ""
    assert named.status is JobStatus.PENDING
    a = worker(e, "a", 2.0)
    assert offers(e) == [offer(a, named, resuming=False)]


@pytest.mark.parametrize(("dispatched", "registered"), [("prod", ""), ("", "prod"), ("prod", "staging")])
def test_deployment_must_match_exactly(dispatched: str, registered: str) -> None:
    e = make()
    job = job_for(e, deployment=dispatched)
    worker(e, "a", deployment=registered)
    assert offers(e) == [] and job.status is JobStatus.PENDING
    matching = worker(e, "a", deployment=dispatched)
    assert offers(e) == [offer(matching, job, resuming=False)]


# Waiting for a worker


def test_a_job_waits_pending_and_is_offered_when_a_worker_registers_later() -> None:
    e = make()
    job = job_for(e, now=0.0)
    assert job.status is JobStatus.PENDING and e.jobs == {job.id: job}
    e.tick(30.0)
    assert job.status is JobStatus.PENDING
    w = worker(e, "a", 31.0)
    assert offers(e) == [offer(w, job, resuming=False)]
    assert (job.status, job.worker_id, job.offered_at) == (JobStatus.OFFERED, w, 31.0)
    assert e.workers[w].jobs == {job.id}


def test_a_pending_job_fails_after_pending_timeout_when_no_worker_registered() -> None:
    e = make(pending_timeout=60.0)
    job = job_for(e, "x", now=0.0)
    e.take_decisions()
    assert e.next_deadline() == 60.0
    e.tick(59.9)
    assert job.status is JobStatus.PENDING
    e.tick(60.0)
    assert job.status is JobStatus.FAILED and job.ended_at == 60.0
    assert job.error == "no worker registered for agent 'x' within 60s (no worker is registered at all)"
    assert e.take_decisions() == [JobEnded(job)] and e.jobs == {}


def test_a_pending_job_fails_with_each_workers_reported_state() -> None:
    e = make(pending_timeout=60.0, load_threshold=0.7)
    full, loaded = worker(e, "x"), worker(e, "x")
    e.worker_status(full, WorkerStatus.FULL, 0.5, 3, 0.0)
    e.worker_status(loaded, WorkerStatus.AVAILABLE, 0.75, 2, 0.0)
    job = job_for(e, "x", now=0.0)
    assert offers(e) == []
    e.tick(60.0)
    assert job.status is JobStatus.FAILED
    assert job.error == (
        f"no worker took the job for agent 'x' within 60s: {full} reported itself full (load 0.50), "
        f"{loaded} was over the load threshold 0.7 (load 0.75)"
    )


# The happy path


def test_offer_accept_assign_running_success() -> None:
    e = make()
    w = worker(e, "a")
    job = job_for(e, now=1.0)
    assert offers(e) == [offer(w, job, resuming=False)]
    assert e.availability_answer(w, job.id, ACCEPT, 2.0)
    assert e.take_decisions() == [assign(w, job, AgentParticipant(identity=f"agent-{job.id}"))]
    assert (job.status, job.agent_identity, job.started_at) == (JobStatus.ASSIGNED, f"agent-{job.id}", None)
    assert e.workers[w].assigned_since_report == 1
    assert e.job_update(w, job.id, JobUpdate.RUNNING, "", 3.0)
    assert (job.status, job.started_at) == (JobStatus.RUNNING, 3.0)
    assert e.job_update(w, job.id, JobUpdate.SUCCESS, "", 9.0)
    assert (job.status, job.error, job.ended_at) == (JobStatus.SUCCEEDED, "", 9.0)
    assert e.take_decisions() == [JobStarted(job), JobEnded(job)]
    assert e.jobs == {} and e.workers[w].jobs == set()
    assert not e.job_update(w, job.id, JobUpdate.RUNNING, "", 10.0)  # ended: no longer its job


def test_offers_and_assignments_carry_what_the_worker_is_told() -> None:
    e = make()
    w = worker(e, "a", job_type=JobType.PARTICIPANT)
    e.create_room(RoomSpec("r", agents=(DispatchSpec("a", metadata="m"),)), 0.0)
    e.join(RoomSpec("r"), Participant(identity="caller", sid="PA_caller", joined_at=1.0), 1.0)
    [offered] = offers(e)
    room = e.room("r")
    assert offered.context == JobContext(room, DispatchSpec("a", metadata="m"), room.participants["caller"])
    assert e.availability_answer(w, offered.job.id, ACCEPT, 2.0)
    [assigned] = only(AssignJob, e.take_decisions())
    assert assigned.context == offered.context


def test_the_answer_chooses_how_the_agent_appears() -> None:
    e = make()
    w = worker(e, "a")
    job = job_for(e)
    answer = AvailabilityAnswer(True, identity="bot", name="Bot", metadata="m", attributes={"k": "v"})
    assert e.availability_answer(w, job.id, answer, 1.0)
    [assign] = only(AssignJob, e.take_decisions())
    assert assign.participant == AgentParticipant("bot", "Bot", "m", {"k": "v"})
    assert job.agent_identity == "bot"


def test_answers_and_updates_for_jobs_the_worker_does_not_hold_are_refused() -> None:
    e = make()
    w = worker(e, "a")
    other = worker(e, "a")
    job = job_for(e)
    assert job.worker_id == w
    assert not e.availability_answer(other, job.id, ACCEPT, 1.0)
    assert not e.availability_answer(w, "AJ_unknown", ACCEPT, 1.0)
    assert not e.job_update(w, job.id, JobUpdate.RUNNING, "", 1.0)  # offered, not assigned
    assert e.availability_answer(w, job.id, ACCEPT, 1.0)
    assert not e.availability_answer(w, job.id, ACCEPT, 1.0)  # answered already
    assert not e.job_update(other, job.id, JobUpdate.SUCCESS, "", 2.0)
    assert job.status is JobStatus.ASSIGNED and job.worker_id == w


# Rejections, terminations and silence


def test_a_rejected_job_goes_to_the_next_worker_and_fails_at_its_deadline_when_all_reject() -> None:
    e = make(pending_timeout=60.0)
    w1 = worker(e, "x", 0.0)
    w2 = worker(e, "x", 1.0)
    job = job_for(e, "x", now=2.0)
    assert offers(e) == [offer(w1, job, resuming=False)]
    assert e.availability_answer(w1, job.id, REJECT, 3.0)
    assert offers(e) == [offer(w2, job, resuming=False)]
    assert e.workers[w1].jobs == set() and e.workers[w2].jobs == {job.id}
    assert e.availability_answer(w2, job.id, REJECT, 4.0)
    # A rejection means "not now": the job waits, and is not offered again to the workers that said no...
    assert job.status is JobStatus.PENDING and offers(e) == []
    assert e.workers[w2].jobs == set() and job.rejected_by == {w1: 1, w2: 1}
    e.worker_status(w2, WorkerStatus.AVAILABLE, 0.2, 1, 5.0)
    assert offers(e) == [offer(w2, job, resuming=False)]
    assert e.availability_answer(w2, job.id, REJECT, 6.0)
    e.tick(61.9)
    assert job.status is JobStatus.PENDING
    e.tick(62.0)
    assert job.status is JobStatus.FAILED
    assert job.error == (
        f"no worker took the job for agent 'x' within 60s: {w1} declined it (load 0.00), "
        f"{w2} declined it 2 times (load 0.20)"
    )
    assert e.take_decisions() == [JobEnded(job)]


def test_a_worker_that_rejected_is_asked_again_after_its_next_status_report() -> None:
    e = make()
    w = worker(e, "x")
    job = job_for(e, "x", now=1.0)
    assert offers(e) == [offer(w, job, resuming=False)]
    e.availability_answer(w, job.id, REJECT, 2.0)
    assert offers(e) == [] and job.status is JobStatus.PENDING
    e.tick(30.0)  # nor after its availability deadline
    assert offers(e) == [] and job.status is JobStatus.PENDING
    e.worker_status(w, WorkerStatus.AVAILABLE, 0.1, 0, 3.0)
    assert offers(e) == [offer(w, job, resuming=False)]


def test_rejected_by_the_only_automatic_worker() -> None:
    e = make(pending_timeout=60.0)
    w = worker(e, "")
    room = e.create_room(RoomSpec(name="r"), 0.0)
    [job] = next(iter(room.dispatches.values())).jobs
    e.availability_answer(w, job.id, REJECT, 1.0)
    e.tick(60.0)
    assert job.error == f"no worker took the job for automatic agents within 60s: {w} declined it (load 0.00)"


def test_terminate_answer_ends_the_job_without_trying_another_worker() -> None:
    e = make()
    w1 = worker(e, "a", 0.0)
    worker(e, "a", 1.0)
    job = job_for(e, now=2.0)
    offers(e)
    assert e.availability_answer(w1, job.id, AvailabilityAnswer(available=False, terminate=True), 3.0)
    assert job.status is JobStatus.SUCCEEDED
    assert job.error == f"worker {w1} declined the job and asked to end it"
    assert e.take_decisions() == [JobEnded(job)]
    assert job.tried_workers == {w1} and e.jobs == {}


def test_no_answer_within_availability_timeout_moves_the_job_to_the_next_worker() -> None:
    e = make(availability_timeout=5.0)
    w1 = worker(e, "a", 0.0)
    w2 = worker(e, "a", 0.0)
    job = job_for(e, now=10.0)
    assert offers(e) == [offer(w1, job, resuming=False)]
    assert e.next_deadline() == 15.0
    e.tick(14.9)
    assert offers(e) == []
    e.tick(15.0)
    assert offers(e) == [offer(w2, job, resuming=False)]
    assert not e.availability_answer(w1, job.id, ACCEPT, 15.5)  # too late
    assert job.worker_id == w2 and job.status is JobStatus.OFFERED


# Selection


def test_the_least_loaded_worker_gets_the_offer() -> None:
    e = make()
    loads = {worker(e, "a"): load for load in (0.5, 0.2, 0.7)}
    for w, load in loads.items():
        e.worker_status(w, WorkerStatus.AVAILABLE, load, 1, 0.0)
    job = job_for(e)
    [offer] = offers(e)
    assert loads[offer.worker_id] == 0.2 and job.worker_id == offer.worker_id


def test_full_workers_and_workers_at_the_load_threshold_get_no_offers() -> None:
    e = make(load_threshold=0.75)
    at_threshold, over, full = worker(e, "a"), worker(e, "a"), worker(e, "a")
    e.worker_status(at_threshold, WorkerStatus.AVAILABLE, 0.75, 3, 0.0)
    e.worker_status(over, WorkerStatus.AVAILABLE, 0.9, 3, 0.0)
    e.worker_status(full, WorkerStatus.FULL, 0.0, 0, 0.0)
    job = job_for(e)
    assert offers(e) == [] and job.status is JobStatus.PENDING
    under = worker(e, "a", 1.0)
    e.worker_status(under, WorkerStatus.AVAILABLE, 0.74, 3, 1.0)
    assert offers(e) == [offer(under, job, resuming=False)]


def test_a_burst_of_jobs_is_spread_over_idle_workers_one_offer_at_a_time() -> None:
    e = make()
    workers = [worker(e, "a", float(i)) for i in range(3)]
    room = e.create_room(RoomSpec(name="r", agents=tuple(DispatchSpec("a") for _ in range(6))), 10.0)
    jobs = [job for dispatch in room.dispatches.values() for job in dispatch.jobs]
    first = offers(e)
    assert [(o.worker_id, o.job) for o in first] == list(zip(workers, jobs[:3], strict=True))
    assert [j.status for j in jobs[3:]] == [JobStatus.PENDING] * 3  # each worker is asked one at a time
    every_offer = list(first)
    for offer in first:
        assert e.availability_answer(offer.worker_id, offer.job.id, ACCEPT, 11.0)
        [next_offer] = offers(e)  # the worker that answered is asked about the oldest waiting job
        assert next_offer.worker_id == offer.worker_id
        every_offer.append(next_offer)
    for offer in every_offer[3:]:
        assert e.availability_answer(offer.worker_id, offer.job.id, ACCEPT, 12.0)
    assert sorted(o.job.id for o in every_offer) == sorted(j.id for j in jobs)  # each offered exactly once
    assert [o.job for o in every_offer] == jobs
    for w in workers:
        assert e.workers[w].assigned_since_report == 2
        assert e.workers[w].effective_load() == pytest.approx(0.1)
    assert all(j.status is JobStatus.ASSIGNED for j in jobs)


def test_assigned_since_report_sends_the_next_job_to_the_worker_with_fewer_new_jobs() -> None:
    e = make()
    w1, w2 = worker(e, "a", 0.0), worker(e, "a", 1.0)
    for i in range(3):  # w1 takes two jobs, w2 one (w1 is preferred on ties: it registered first)
        job = job_for(e, room=f"r{i}")
        e.availability_answer(job.worker_id, job.id, ACCEPT, 2.0)
    assert (e.workers[w1].assigned_since_report, e.workers[w2].assigned_since_report) == (2, 1)
    assert job_for(e, room="r3").worker_id == w2


def test_jobs_assigned_since_the_last_report_count_towards_the_load() -> None:
    e = make()
    light, busy = worker(e, "a"), worker(e, "a")
    e.worker_status(light, WorkerStatus.AVAILABLE, 0.3, 1, 0.0)  # 0.3 per job
    e.worker_status(busy, WorkerStatus.AVAILABLE, 0.4, 4, 0.0)  # 0.1 per job
    first = job_for(e, room="r1")
    assert first.worker_id == light
    e.availability_answer(light, first.id, ACCEPT, 1.0)
    assert e.workers[light].effective_load() == pytest.approx(0.6)
    second = job_for(e, room="r2")
    assert second.worker_id == busy  # 0.4 < 0.6
    e.availability_answer(busy, second.id, ACCEPT, 1.0)
    # A new report replaces the estimate.
    e.worker_status(light, WorkerStatus.AVAILABLE, 0.3, 1, 2.0)
    assert e.workers[light].assigned_since_report == 0
    assert job_for(e, room="r3").worker_id == light


def test_a_burst_on_one_worker_goes_on_as_long_as_the_worker_accepts() -> None:
    """The estimate for jobs assigned since the last report ranks workers; it never holds a job back:
    the worker's own answer (and its next report) says when it is full."""
    e = make(load_threshold=0.2)
    w = worker(e, "a")
    jobs = []
    for i in range(30):
        job = job_for(e, room=f"r{i}")
        jobs.append(job)
        assert job.status is JobStatus.OFFERED
        e.availability_answer(w, job.id, ACCEPT, 0.0)
    assert all(j.status is JobStatus.ASSIGNED for j in jobs)
    e.worker_status(w, WorkerStatus.AVAILABLE, 0.2, 30, 1.0)  # its own report: at the threshold
    assert job_for(e, room="late").status is JobStatus.PENDING


def test_among_many_workers_a_job_still_finds_the_only_one_that_can_take_it() -> None:
    e = make()
    workers = [worker(e, "a") for _ in range(40)]  # more than the sample the engine looks at first
    for w in workers[:-1]:
        e.worker_status(w, WorkerStatus.FULL, 1.0, 1, 0.0)
    for i in range(3):
        job = job_for(e, room=f"r{i}")
        assert job.worker_id == workers[-1]
        assert e.availability_answer(workers[-1], job.id, ACCEPT, 1.0)


def test_a_status_report_with_ws_available_offers_the_pending_jobs() -> None:
    e = make()
    w = worker(e, "a")
    e.worker_status(w, WorkerStatus.FULL, 0.0, 0, 0.0)
    first, second = job_for(e, room="r1"), job_for(e, room="r2")
    assert offers(e) == []
    e.worker_status(w, None, 0.0, 0, 1.0)  # no status: still full
    assert offers(e) == []
    e.worker_status(w, WorkerStatus.AVAILABLE, 0.0, 0, 2.0)
    assert offers(e) == [offer(w, first, resuming=False)]  # one question at a time
    e.availability_answer(w, first.id, ACCEPT, 3.0)
    assert offers(e) == [offer(w, second, resuming=False)]


# Lost workers


def test_an_offered_job_moves_to_another_worker_when_its_worker_disconnects() -> None:
    e = make()
    w1, w2 = worker(e, "a", 0.0), worker(e, "a", 1.0)
    job = job_for(e)
    assert job.worker_id == w1
    offers(e)
    e.worker_disconnected(w1, 2.0)
    assert offers(e) == [offer(w2, job, resuming=False)]
    assert w1 not in e.workers


def test_a_running_job_of_a_lost_worker_is_orphaned_then_resumed_on_another_worker() -> None:
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    w2 = worker(e, "a", 1.0)
    e.worker_disconnected(w1, 2.0)
    assert (job.status, job.worker_id, job.orphaned_at) == (JobStatus.RUNNING, w1, 2.0)
    assert e.take_decisions() == [] and e.next_deadline() == 7.0
    e.tick(6.9)
    assert job.orphaned_at == 2.0 and e.take_decisions() == []
    e.tick(7.0)
    assert e.take_decisions() == [JobQueued(job), offer(w2, job, resuming=True)]
    assert (job.status, job.restarts, job.orphaned_at) == (JobStatus.OFFERED, 1, None)
    # The new attempt carries no error of its own; the first one's end is kept with its worker.
    assert job.error == "" and job.attempt == 2
    [first] = job.attempts
    assert (first.number, first.worker_id, first.error) == (1, w1, f"worker {w1} disconnected")
    assert (first.started_at, first.ended_at) == (0.0, 7.0)


def test_a_running_job_of_a_lost_worker_fails_when_its_policy_is_never() -> None:
    e = make(reconnect_grace=5.0)
    w1, job = running(e, policy=NEVER)
    worker(e, "a", 1.0)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)
    assert job.status is JobStatus.FAILED and job.error == f"worker {w1} disconnected"
    assert e.take_decisions() == [JobEnded(job)]


def test_restarts_after_lost_workers_are_bounded() -> None:
    e = make(max_job_restarts=2, reconnect_grace=5.0)
    now = 0.0
    w, job = running(e)
    for restarts in (1, 2):
        e.worker_disconnected(w, now)
        now += 5.0
        w = worker(e, "a", now)  # nobody was there at the deadline: the job is pending until now
        e.tick(now)
        assert job.restarts == restarts and job.status is JobStatus.OFFERED and job.worker_id == w
        e.availability_answer(w, job.id, ACCEPT, now)
        e.job_update(w, job.id, JobUpdate.RUNNING, "", now)
    e.worker_disconnected(w, now)
    e.tick(now + 5.0)
    assert job.status is JobStatus.FAILED
    assert job.error == f"worker {w} disconnected (failed 3 times, gave up after 2 restarts)"
    assert [a.number for a in job.attempts] == [1, 2] and job.attempt == 3


def test_a_failed_job_is_restarted_on_failure_policy() -> None:
    e = make()
    w, job = running(e)
    assert e.job_update(w, job.id, JobUpdate.FAILED, "boom", 5.0)
    assert e.take_decisions() == [JobQueued(job), offer(w, job, resuming=True)]
    assert (job.restarts, job.error, job.started_at) == (1, "", None)
    assert job.attempts[0].error == f"job failed on worker {w}: boom"
    assert job.pending_since == 5.0


def test_a_failed_job_ends_when_its_policy_is_never() -> None:
    e = make()
    w, job = running(e, policy=NEVER)
    assert e.job_update(w, job.id, JobUpdate.FAILED, "", 5.0)
    assert job.status is JobStatus.FAILED and job.error == f"job failed on worker {w}"
    assert e.take_decisions() == [JobEnded(job)] and e.workers[w].jobs == set()


def test_failures_give_up_after_max_job_restarts() -> None:
    e = make(max_job_restarts=2)
    w, job = running(e)
    for restarts in (1, 2):
        e.job_update(w, job.id, JobUpdate.FAILED, "boom", 1.0)
        assert job.restarts == restarts and job.worker_id == w
        e.availability_answer(w, job.id, ACCEPT, 1.0)
        e.job_update(w, job.id, JobUpdate.RUNNING, "", 1.0)
    e.job_update(w, job.id, JobUpdate.FAILED, "boom", 2.0)
    assert job.status is JobStatus.FAILED
    assert job.error == f"job failed on worker {w}: boom (failed 3 times, gave up after 2 restarts)"


# Reconnecting workers


def test_migrate_within_the_grace_reattaches_the_job_without_running_it_again() -> None:
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    e.worker_disconnected(w1, 2.0)
    w2 = worker(e, "a", 3.0)
    assert e.take_decisions() == []  # an orphaned job is not offered
    e.migrate_jobs(w2, [job.id], 3.0)
    assert e.take_decisions() == [JobChanged(job)]  # for the store: where it runs now
    assert (job.status, job.worker_id, job.orphaned_at, job.restarts) == (JobStatus.RUNNING, w2, None, 0)
    assert e.workers[w2].jobs == {job.id}
    e.tick(100.0)
    assert e.take_decisions() == [] and job.status is JobStatus.RUNNING
    assert e.job_update(w2, job.id, JobUpdate.SUCCESS, "", 101.0)
    assert job.status is JobStatus.SUCCEEDED


def test_migrate_of_an_assigned_job_marks_it_running() -> None:
    e = make()
    w1 = worker(e, "a")
    job = job_for(e)
    e.availability_answer(w1, job.id, ACCEPT, 1.0)
    e.worker_disconnected(w1, 2.0)
    w2 = worker(e, "a", 3.0)
    e.migrate_jobs(w2, [job.id, job.id], 3.0)
    assert (job.status, job.worker_id, job.started_at) == (JobStatus.RUNNING, w2, 3.0)


def test_a_reconnected_worker_may_claim_an_orphaned_job_by_reporting_on_it() -> None:
    e = make()
    w1, job = running(e)
    e.worker_disconnected(w1, 2.0)
    w2 = worker(e, "a", 3.0)
    assert e.job_update(w2, job.id, JobUpdate.RUNNING, "", 3.0)
    assert (job.status, job.worker_id, job.orphaned_at) == (JobStatus.RUNNING, w2, None)
    assert e.workers[w2].jobs == {job.id}


def test_migrate_after_the_job_went_to_another_worker_stops_the_migrating_copy() -> None:
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    w3 = worker(e, "a", 1.0)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)
    assert offers(e) == [offer(w3, job, resuming=True)]
    assert e.availability_answer(w3, job.id, ACCEPT, 7.5)
    e.take_decisions()
    w2 = worker(e, "a", 8.0)
    e.migrate_jobs(w2, [job.id], 8.0)
    assert e.take_decisions() == [TerminateJob(w2, job.id, f"job runs on worker {w3}")]
    assert (job.status, job.worker_id) == (JobStatus.ASSIGNED, w3) and e.workers[w2].jobs == set()


def test_migrate_before_the_restarted_job_was_assigned_takes_the_copy_back() -> None:
    """The grace ran out and the job was offered to another worker, which has not accepted yet: the old
    copy is still the only one, so the reconnected worker keeps it and the offer is withdrawn."""
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    w3 = worker(e, "a", 1.0)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)
    assert offers(e) == [offer(w3, job, resuming=True)]
    w2 = worker(e, "a", 8.0)
    e.migrate_jobs(w2, [job.id], 8.0)
    assert e.take_decisions() == [JobChanged(job)]
    assert (job.status, job.worker_id, job.attempt, job.attempts) == (JobStatus.RUNNING, w2, 1, [])
    assert job.started_at == 0.0  # the same run as before, not a new one
    assert not e.availability_answer(w3, job.id, ACCEPT, 9.0)  # the offer is withdrawn
    assert e.workers[w3].jobs == set() and e.workers[w3].offered_job == ""


def test_migrate_of_an_unknown_or_ended_job_stops_it() -> None:
    e = make()
    w, job = running(e)
    e.job_update(w, job.id, JobUpdate.SUCCESS, "", 1.0)
    e.take_decisions()
    e.migrate_jobs(w, ["AJ_unknown", job.id], 2.0)
    assert e.take_decisions() == [
        TerminateJob(w, "AJ_unknown", "job already ended"),
        TerminateJob(w, job.id, "job already ended"),
    ]


def test_migrate_of_a_job_offered_to_the_migrating_worker_itself_does_not_run_it_twice() -> None:
    """The grace ran out with no other worker: the job was requeued, and the reconnecting worker that still
    runs it is offered it as soon as it registers, before its migrate arrives. The migrate re-attaches it
    (as any waiting job) and withdraws the offer; left offered, it could be assigned a second time while
    the first copy runs."""
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)
    assert job.status is JobStatus.PENDING and job.restarts == 1
    w2 = worker(e, "a", 8.0)  # the same worker process, reconnected
    assert offers(e) == [offer(w2, job, resuming=True)]
    e.migrate_jobs(w2, [job.id], 8.0)
    assert e.take_decisions() == [JobChanged(job)]
    assert (job.status, job.worker_id) == (JobStatus.RUNNING, w2), f"job left {job.status.value}"
    assert e.workers[w2].offered_job == "" and e.workers[w2].jobs == {job.id}
    assert not e.availability_answer(w2, job.id, ACCEPT, 9.0)  # the offer is withdrawn
    assert e.take_decisions() == []


def test_migrate_of_several_requeued_jobs_offers_none_of_them_on_the_way() -> None:
    """The reconnecting worker is offered the first of its requeued jobs as it registers; re-attaching that
    one frees the worker for its next question, and the next job in the same migrate list (waiting too)
    must be re-attached, not offered to it first: a worker is asked one question at a time, and an offer
    of a job it already runs is a question it cannot answer."""
    e = make(reconnect_grace=5.0)
    w1 = worker(e, "a")
    first, second = job_for(e, room="r1"), job_for(e, room="r2")
    for job in (first, second):
        assert e.availability_answer(w1, job.id, ACCEPT, 1.0)
        assert e.job_update(w1, job.id, JobUpdate.RUNNING, "", 1.0)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)
    assert first.status is second.status is JobStatus.PENDING
    other = job_for(e, room="r3", now=7.5)
    e.take_decisions()
    w2 = worker(e, "a", 8.0)  # the same worker process, reconnected
    assert offers(e) == [offer(w2, first, resuming=True)]
    e.migrate_jobs(w2, [first.id, second.id], 8.0)
    # Both re-attached; only then is the worker, free again, asked about the job that is not its own.
    assert e.take_decisions() == [JobChanged(first), JobChanged(second), offer(w2, other, resuming=False)]
    for job in (first, second):
        assert (job.status, job.worker_id) == (JobStatus.RUNNING, w2)
    assert e.workers[w2].jobs == {first.id, second.id, other.id} and e.workers[w2].offered_job == other.id


# Start timeout


def test_an_assigned_job_not_started_in_time_is_stopped_and_restarted() -> None:
    e = make(start_timeout=10.0)
    w1 = worker(e, "a", 0.0)
    w2 = worker(e, "a", 0.0)
    job = job_for(e)
    assert job.worker_id == w1
    e.availability_answer(w1, job.id, ACCEPT, 1.0)
    e.take_decisions()
    assert e.next_deadline() == 11.0
    e.tick(10.9)
    assert e.take_decisions() == []
    e.tick(11.0)
    # w1 may still be waiting for a process to run it in: its copy is stopped only once another exists.
    assert e.take_decisions() == [JobQueued(job), offer(w2, job, resuming=True)]
    assert job.attempts[0].error == f"worker {w1} did not start the job within 10s" and job.restarts == 1
    assert e.workers[w1].jobs == set()
    assert e.availability_answer(w2, job.id, ACCEPT, 12.0)
    assert only(TerminateJob, e.take_decisions()) == [TerminateJob(w1, job.id, "attempt 1 was replaced")]
    # A late report of the replaced copy stops it again; the job stays with w2.
    assert not e.job_update(w1, job.id, JobUpdate.RUNNING, "", 13.0)
    assert e.take_decisions() == [TerminateJob(w1, job.id, "job is not this worker's")]
    assert (job.status, job.worker_id) == (JobStatus.ASSIGNED, w2)


def test_a_worker_that_did_not_start_a_job_in_time_is_not_offered_it_again() -> None:
    e = make(start_timeout=10.0)
    w = worker(e, "a", 0.0)
    job = job_for(e)
    e.availability_answer(w, job.id, ACCEPT, 1.0)
    e.take_decisions()
    e.tick(11.0)
    e.worker_status(w, WorkerStatus.AVAILABLE, 0.0, 0, 12.0)
    assert offers(e) == [] and job.status is JobStatus.PENDING
    e.tick(71.0)
    assert job.status is JobStatus.FAILED
    assert job.error == (
        f"no worker took the job for agent 'a' within 60s: {w} did not start it in time before (load 0.00)"
    )
    assert e.take_decisions()[0] == TerminateJob(w, job.id, "attempt 1 was replaced")


def test_a_copy_that_starts_late_is_taken_back_while_no_other_copy_exists() -> None:
    """The livekit-agents framework launches an accepted job only when a process is free: with slow
    process setup, it may start after the start timeout. If no other worker took the job meanwhile, that
    copy is the job again (the same attempt), rather than being stopped and the job run anew."""
    e = make(start_timeout=10.0)
    w = worker(e, "a", 0.0)
    job = job_for(e)
    e.availability_answer(w, job.id, ACCEPT, 1.0)
    e.take_decisions()
    e.tick(11.0)
    assert (job.status, job.attempt) == (JobStatus.PENDING, 2)
    assert e.job_update(w, job.id, JobUpdate.RUNNING, "", 20.0)
    assert e.take_decisions() == [JobQueued(job), JobChanged(job)]  # the restart (from the tick), the revival
    assert (job.status, job.worker_id, job.attempt, job.attempts) == (JobStatus.RUNNING, w, 1, [])
    assert job.started_at == 20.0 and job.error == "" and e.workers[w].jobs == {job.id}


def test_an_assigned_job_not_started_in_time_fails_when_its_policy_is_never() -> None:
    e = make(start_timeout=10.0)
    w = worker(e, "a")
    job = job_for(e, policy=NEVER)
    e.availability_answer(w, job.id, ACCEPT, 1.0)
    e.take_decisions()
    e.tick(11.0)
    reason = f"worker {w} did not start the job within 10s"
    assert e.take_decisions() == [TerminateJob(w, job.id, reason), JobEnded(job)]
    assert job.status is JobStatus.FAILED
    assert job.error == f"worker {w} did not start the job within 10s"


# Deleting dispatches and rooms


def test_deleting_the_dispatch_of_a_running_job_stops_it() -> None:
    e = make()
    w, job = running(e)
    e.delete_dispatch(job.room, job.dispatch_id, 5.0)
    assert e.take_decisions() == [
        TerminateJob(w, job.id, "terminated: dispatch deleted"),
        JobEnded(job),
        DispatchDeleted(job.room, job.dispatch_id, (job.id,)),
    ]
    assert (job.status, job.error) == (JobStatus.SUCCEEDED, "terminated: dispatch deleted")
    assert e.jobs == {} and e.workers[w].jobs == set()


def test_deleting_the_room_of_a_running_job_stops_it() -> None:
    e = make()
    w, job = running(e)
    e.delete_room(job.room, 5.0)
    reason = "terminated: room closed (deleted by API request)"
    assert TerminateJob(w, job.id, reason) in e.take_decisions()
    assert (job.status, job.error) == (JobStatus.SUCCEEDED, reason)
    assert e.workers[w].jobs == set()


def test_deleting_the_dispatch_of_offered_and_assigned_jobs() -> None:
    e = make()
    w = worker(e, "a")
    assigned = job_for(e, room="r1")
    e.availability_answer(w, assigned.id, ACCEPT, 1.0)
    offered, waiting = job_for(e, room="r2"), job_for(e, room="r3")
    assert (offered.status, waiting.status) == (JobStatus.OFFERED, JobStatus.PENDING)
    e.take_decisions()
    e.delete_dispatch("r2", offered.dispatch_id, 2.0)
    # An offer needs no termination, and the worker is free for the next question.
    assert e.take_decisions() == [
        offer(w, waiting, resuming=False),
        JobEnded(offered),
        DispatchDeleted("r2", offered.dispatch_id, (offered.id,)),
    ]
    e.delete_dispatch("r1", assigned.dispatch_id, 2.0)
    assert e.take_decisions() == [
        TerminateJob(w, assigned.id, "terminated: dispatch deleted"),
        JobEnded(assigned),
        DispatchDeleted("r1", assigned.dispatch_id, (assigned.id,)),
    ]
    assert offered.status is assigned.status is JobStatus.FAILED
    assert not e.availability_answer(w, offered.id, ACCEPT, 3.0)


# Participant and publisher jobs


def test_a_participant_worker_gets_a_job_per_joining_participant() -> None:
    e = make()
    w = worker(e, "p", job_type=JobType.PARTICIPANT)
    room = e.create_room(RoomSpec(name="r", agents=(DispatchSpec("p"),)), 0.0)
    [dispatch] = room.dispatches.values()
    assert dispatch.jobs == []  # the agent's only workers take participant jobs
    e.take_decisions()
    e.participant_joined("r", person("alice"), 1.0)
    [job] = dispatch.jobs
    assert (job.type, job.target_identity, job.worker_id) == (JobType.PARTICIPANT, "alice", w)
    assert offers(e) == [offer(w, job, resuming=False)]
    e.participant_joined("r", person("bot", kind=AGENT), 2.0)
    e.participant_joined("r", person("rec", kind=EGRESS), 2.0)
    assert len(dispatch.jobs) == 1 and offers(e) == []
    e.participant_joined("r", person("bob"), 3.0)
    assert [j.target_identity for j in dispatch.jobs] == ["alice", "bob"]


def test_a_publisher_worker_gets_one_job_on_the_first_published_track() -> None:
    e = make()
    w = worker(e, "pub", job_type=JobType.PUBLISHER)
    room = e.create_room(RoomSpec(name="r", agents=(DispatchSpec("pub"),)), 0.0)
    [dispatch] = room.dispatches.values()
    e.participant_joined("r", person("alice"), 1.0)
    assert dispatch.jobs == []
    e.track_published("r", "alice", Track("TR_1", "audio"), 2.0)
    [job] = dispatch.jobs
    assert (job.type, job.target_identity, job.worker_id) == (JobType.PUBLISHER, "alice", w)
    e.track_published("r", "alice", Track("TR_2", "video"), 3.0)
    assert len(dispatch.jobs) == 1


def test_no_participant_or_publisher_jobs_without_workers_of_that_type() -> None:
    e = make()
    worker(e, "a")  # a room worker only
    room = e.create_room(RoomSpec(name="r", agents=(DispatchSpec("a"), DispatchSpec("none"))), 0.0)
    e.participant_joined("r", person("alice"), 1.0)
    e.track_published("r", "alice", Track("TR_1", "audio"), 2.0)
    for dispatch in room.dispatches.values():
        assert [j.type for j in dispatch.jobs] == [JobType.ROOM]


# Draining and shutting down


def test_drain_stops_offers_and_new_dispatches_but_running_jobs_go_on() -> None:
    e = make()
    w, job = running(e)
    waiting = job_for(e, "b", room="other")
    e.drain()
    worker(e, "b", 1.0)
    e.worker_status(w, WorkerStatus.AVAILABLE, 0.0, 0, 1.0)
    assert offers(e) == [] and waiting.status is JobStatus.PENDING
    with pytest.raises(Unavailable):
        e.create_dispatch("other", DispatchSpec("b"), 2.0)
    with pytest.raises(Unavailable):
        e.create_room(RoomSpec(name="new"), 2.0)
    assert e.job_update(w, job.id, JobUpdate.RUNNING, "", 3.0) and job.status is JobStatus.RUNNING
    assert e.busy_jobs() == 1


def test_a_failure_while_draining_is_not_restarted() -> None:
    e = make()
    w, job = running(e)
    e.drain()
    e.job_update(w, job.id, JobUpdate.FAILED, "boom", 1.0)
    assert job.status is JobStatus.FAILED and e.take_decisions() == [JobEnded(job)]


def test_shut_down_terminates_running_jobs_and_ends_the_rest() -> None:
    e = make()
    w, job = running(e)
    waiting = job_for(e, "b", room="other")
    e.drain()
    e.shut_down(5.0)
    decisions = e.take_decisions()
    assert TerminateJob(w, job.id, "terminated: server shut down") in decisions
    assert JobEnded(job) in decisions and JobEnded(waiting) in decisions
    assert job.status is JobStatus.SUCCEEDED and waiting.status is JobStatus.FAILED
    assert waiting.error == "terminated: server shut down"
    assert e.jobs == {} and e.busy_jobs() == 0


# Reports about jobs a worker does not hold


def test_a_worker_running_a_job_it_does_not_hold_is_told_to_stop_it() -> None:
    """A reconnected worker that only reports (no migrate) after its job was re-run elsewhere, or one that
    runs a job from before a server restart: its copy is stopped, so the job never runs twice."""
    e = make(reconnect_grace=5.0)
    w1, job = running(e)
    e.worker_disconnected(w1, 2.0)
    w2 = worker(e, "a", 3.0)  # another worker takes the job after the grace
    e.tick(7.0)
    assert only(OfferJob, e.take_decisions()) == [offer(w2, job, resuming=True)]
    e.availability_answer(w2, job.id, ACCEPT, 7.0)
    e.take_decisions()
    w1_again = worker(e, "a", 8.0)
    assert not e.job_update(w1_again, job.id, JobUpdate.RUNNING, "", 8.0)
    assert only(TerminateJob, e.take_decisions()) == [
        TerminateJob(w1_again, job.id, "job is not this worker's")
    ]
    assert not e.job_update(w1_again, "AJ_from_before_restart", JobUpdate.RUNNING, "", 8.0)
    assert only(TerminateJob, e.take_decisions())[0].job_id == "AJ_from_before_restart"
    assert job.worker_id == w2, "the job stays where it runs"


def test_an_orphaned_job_is_not_claimed_by_a_worker_of_another_agent() -> None:
    e = make(reconnect_grace=5.0)
    w1, job = running(e, "a")
    e.worker_disconnected(w1, 2.0)
    other = worker(e, "b", 3.0)
    e.migrate_jobs(other, [job.id], 3.0)
    assert only(TerminateJob, e.take_decisions())[0].worker_id == other
    assert not e.job_update(other, job.id, JobUpdate.SUCCESS, "", 3.0)
    assert job.orphaned_at == 2.0 and job.worker_id == w1, "still waiting for its own worker"


# The job's agent in the room: running on join, ended on leave (for frameworks that never report)


def assigned(
    e: Engine, agent: str = "a", policy: RestartPolicy = RestartPolicy.ON_FAILURE
) -> tuple[str, Job]:
    """A fresh worker of `agent` holding a fresh job it accepted and has not reported on."""
    w = worker(e, agent, 0.0)
    job = job_for(e, agent, room=f"room-{len(e.rooms)}", policy=policy)
    assert e.availability_answer(w, job.id, ACCEPT, 0.0)
    e.take_decisions()
    return w, job


def agent_of(job: Job, attempt: int | None = None, identity: str = "") -> Participant:
    """The participant the job's token lets in: kind agent, naming the job and its attempt."""
    identity = identity or job.agent_identity or f"agent-{job.id}"
    return Participant(
        identity=identity,
        sid=f"PA_{identity}_{attempt or job.attempt}",
        joined_at=0.0,
        kind=AGENT,
        job=(job.id, attempt or job.attempt),
    )


def test_a_job_runs_once_its_agent_joins_without_a_report() -> None:
    e = make(start_timeout=10.0)
    _, job = assigned(e)
    agent = agent_of(job)
    e.participant_joined(job.room, agent, 4.0)
    assert (job.status, job.started_at, job.agent_identity) == (JobStatus.RUNNING, 4.0, f"agent-{job.id}")
    assert e.take_decisions() == [ParticipantJoined(job.room, agent), JobStarted(job)]
    # The start timeout no longer applies: it is running, whatever the framework reports.
    e.tick(100.0)
    assert job.status is JobStatus.RUNNING and e.take_decisions() == []


def test_a_silent_frameworks_job_succeeds_when_its_agent_leaves_the_room() -> None:
    e = make()
    _, job = assigned(e)
    e.participant_joined(job.room, agent_of(job), 1.0)
    e.participant_left(job.room, f"agent-{job.id}", 9.0)
    assert job.status is JobStatus.SUCCEEDED
    assert job.error == f"agent participant 'agent-{job.id}' left the room" and job.ended_at == 9.0


def test_a_silent_frameworks_job_whose_agent_lost_its_connection_is_restarted() -> None:
    e = make(restart_backoff=2.0)
    w, job = assigned(e)
    agent = agent_of(job)
    e.participant_joined(job.room, agent, 1.0)
    e.participant_left(job.room, f"agent-{job.id}", 9.0, lost=True)
    assert (job.status, job.attempt, job.retry_at) == (JobStatus.PENDING, 2, 11.0)
    assert job.attempts[0].error == f"agent participant 'agent-{job.id}' lost its connection"
    # Only what was observed and kept; nothing to carry out while it backs off.
    assert e.take_decisions() == [
        ParticipantJoined(job.room, agent),
        JobStarted(job),
        ParticipantLeft(job.room, agent),
        JobQueued(job),
    ]
    e.tick(11.0)
    assert offers(e) == [offer(w, job, resuming=True)]


def test_a_reporting_frameworks_job_is_ended_by_its_report_not_by_its_agent_leaving() -> None:
    e = make()
    w, job = assigned(e)
    assert e.job_update(w, job.id, JobUpdate.RUNNING, "", 1.0)
    e.participant_joined(job.room, agent_of(job), 2.0)
    e.participant_left(job.room, f"agent-{job.id}", 3.0, lost=True)
    assert job.status is JobStatus.RUNNING
    assert e.job_update(w, job.id, JobUpdate.SUCCESS, "", 4.0)
    assert job.status is JobStatus.SUCCEEDED and job.error == ""


def test_a_job_that_ran_succeeds_when_its_room_closes_even_if_never_reported() -> None:
    e = make()
    w, job = assigned(e)
    e.participant_joined(job.room, agent_of(job), 1.0)
    e.delete_room(job.room, 5.0)
    assert (
        job.status is JobStatus.SUCCEEDED and job.error == "terminated: room closed (deleted by API request)"
    )
    assert TerminateJob(w, job.id, "terminated: room closed (deleted by API request)") in e.take_decisions()


def test_an_agent_whose_job_is_unknown_or_ended_is_refused_and_creates_no_room() -> None:
    e = make()
    ghost = Participant("agent-AJ_gone", "PA_1", 0.0, kind=AGENT, job=("AJ_gone", 1))
    with pytest.raises(FailedPrecondition, match="AJ_gone has ended or is not known"):
        e.join(RoomSpec(name="restarted"), ghost, 0.0)
    assert "restarted" not in e.rooms and e.take_decisions() == []
    w, job = assigned(e)
    e.job_update(w, job.id, JobUpdate.SUCCESS, "", 1.0)
    with pytest.raises(FailedPrecondition):
        e.join(RoomSpec(name=job.room), agent_of(job), 2.0)


def test_an_agent_rejoining_before_the_job_went_elsewhere_takes_the_job_back() -> None:
    """A silent framework's agent loses its connection (the job restarts) and reconnects fully with the
    same token before any other copy was assigned: that copy is the job again, not run twice."""
    e = make(restart_backoff=0.0)
    w, job = assigned(e)
    e.participant_joined(job.room, agent_of(job), 1.0)
    e.participant_left(job.room, f"agent-{job.id}", 2.0, lost=True)
    assert (job.status, job.attempt) == (JobStatus.OFFERED, 2)  # offered to w again at once
    e.participant_joined(job.room, agent_of(job, 1), 2.5)
    assert (job.status, job.worker_id, job.attempt, job.attempts) == (JobStatus.RUNNING, w, 1, [])
    assert not e.availability_answer(w, job.id, ACCEPT, 3.0)  # the new offer was withdrawn


def test_the_agents_of_a_replaced_attempt_are_removed_and_refused() -> None:
    e = make(reconnect_grace=5.0, restart_backoff=0.0)
    w1, job = assigned(e)
    e.participant_joined(job.room, agent_of(job), 1.0)
    e.worker_disconnected(w1, 2.0)
    e.tick(7.0)  # the grace is over: attempt 2 waits; attempt 1's agent is still in the room
    assert (job.status, job.attempt) == (JobStatus.PENDING, 2)
    assert f"agent-{job.id}" in e.rooms[job.room].participants
    with pytest.raises(FailedPrecondition, match="attempt 1 was replaced by attempt 2"):
        e.participant_joined(job.room, agent_of(job, 1, identity="other"), 7.5)  # its worker is gone
    w2 = worker(e, "a", 8.0)
    assert e.availability_answer(w2, job.id, ACCEPT, 8.0)
    [removed] = only(DisconnectParticipant, e.take_decisions())
    assert (removed.identity, removed.cause) == (f"agent-{job.id}", DisconnectCause.JOB_ENDED)
    assert removed.reason == f"job {job.id} was restarted"


def test_deleting_the_dispatch_stops_its_agents_through_their_worker_or_removes_them() -> None:
    """A connected worker is told to stop the job, and its agent leaves by itself (removing it at the same
    moment would race the framework's own shutdown); an agent whose worker is gone is removed."""
    e = make()
    w, job = assigned(e)
    e.participant_joined(job.room, agent_of(job), 1.0)
    e.delete_dispatch(job.room, job.dispatch_id, 2.0)
    decisions = e.take_decisions()
    assert TerminateJob(w, job.id, "terminated: dispatch deleted") in decisions
    assert only(DisconnectParticipant, decisions) == []
    w2, orphan = assigned(e)
    e.participant_joined(orphan.room, agent_of(orphan), 1.0)
    e.worker_disconnected(w2, 2.0)
    e.delete_dispatch(orphan.room, orphan.dispatch_id, 3.0)
    [removed] = only(DisconnectParticipant, e.take_decisions())
    assert (removed.identity, removed.cause) == (f"agent-{orphan.id}", DisconnectCause.JOB_ENDED)


# Restarts back off


def test_restarts_back_off_doubling_up_to_the_maximum() -> None:
    e = make(restart_backoff=1.0, restart_backoff_max=3.0, max_job_restarts=5)
    w, job = running(e)
    now = 10.0
    for delay in (1.0, 2.0, 3.0, 3.0):
        assert e.job_update(w, job.id, JobUpdate.FAILED, "crash", now)
        assert job.retry_at == now + delay and offers(e) == [] and e.next_deadline() == now + delay
        e.tick(now + delay - 0.5)
        assert offers(e) == []
        now += delay
        e.tick(now)
        assert offers(e) == [offer(w, job, resuming=True)]
        e.availability_answer(w, job.id, ACCEPT, now)
        e.job_update(w, job.id, JobUpdate.RUNNING, "", now)
    assert job.pending_since == now  # the pending deadline counts from the end of the back-off


def test_a_job_that_keeps_crashing_fails_saying_how_often() -> None:
    e = make(restart_backoff=0.5, max_job_restarts=3)
    w, job = running(e)
    now = 0.0
    while not job.ended:
        now += 10.0
        e.tick(now)
        if job.status is JobStatus.OFFERED:
            e.availability_answer(w, job.id, ACCEPT, now)
        e.job_update(w, job.id, JobUpdate.FAILED, "exit code 1", now)
    assert job.error == f"job failed on worker {w}: exit code 1 (failed 4 times, gave up after 3 restarts)"
    assert [a.error for a in job.attempts] == [f"job failed on worker {w}: exit code 1"] * 3


# Shutting down: rooms nobody is in


def test_draining_ends_at_once_the_jobs_of_rooms_with_no_participant_left() -> None:
    e = make()
    w, empty_room_job = running(e)
    attended = job_for(e, "a", room="attended")
    e.participant_joined("attended", person("alice"), 1.0)
    waiting = job_for(e, "b", room="nobody")
    e.take_decisions()
    assert e.end_unattended_jobs(2.0) == 0, "only while draining"

    e.drain()
    assert e.end_unattended_jobs(2.0) == 2
    decisions = e.take_decisions()
    reason = "terminated: server shutting down, and no participant is left in the room"
    assert TerminateJob(w, empty_room_job.id, reason) in decisions
    assert empty_room_job.status is JobStatus.SUCCEEDED and empty_room_job.error == reason
    assert waiting.status is JobStatus.FAILED and waiting.error == reason
    assert JobEnded(empty_room_job) in decisions and JobEnded(waiting) in decisions
    assert not attended.ended, "a room someone is in drains"

    e.participant_left("attended", "alice", 3.0)
    assert e.end_unattended_jobs(3.0) == 1 and attended.error == reason
    assert e.jobs == {}


def test_closing_all_rooms_at_shutdown_disconnects_everyone() -> None:
    e = make()
    e.create_room(RoomSpec(name="r"), 0.0)
    e.participant_joined("r", person("alice"), 0.0)
    e.take_decisions()
    e.drain()
    e.shut_down(1.0)
    e.close_all_rooms(1.0)
    [left] = only(DisconnectParticipant, e.take_decisions())
    assert (left.identity, left.reason) == ("alice", "room closed: server shut down")
    assert e.rooms == {}
