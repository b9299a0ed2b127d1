"""Random sequences of worker, dispatch, room and clock events against the engine.

Fake workers know only what the engine told them (OfferJob, AssignJob, TerminateJob) and what they did
themselves. After every step the engine's state is checked against that model and against its own rules:
no job is lost, offered twice, or left waiting with nothing that will ever move it on, and at most one copy
of a job is live: every other copy a connected worker holds is one the engine may still take back, and is
stopped as soon as another copy is assigned. Like livekit-agents, a fake may ignore a termination of a job
it has not launched yet and start it late; the engine must then take that copy back or stop it again.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from switchboard.core import ids
from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.errors import Unavailable
from switchboard.core.events import AssignJob, Decision, JobEnded, OfferJob, TerminateJob
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.rooms import AGENT, STANDARD, Participant, Track
from switchboard.core.selection import choose_worker
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerKey, WorkerSpec, WorkerStatus

SETTINGS = EngineSettings(
    pending_timeout=20.0,
    availability_timeout=3.0,
    start_timeout=6.0,
    reconnect_grace=5.0,
    max_job_restarts=2,
    restart_backoff=1.0,
    restart_backoff_max=2.0,
    load_threshold=0.8,
    empty_timeout=60,
    departure_timeout=10,
    singleton_agents=frozenset({""}),  # the automatic agent: requests for it share a room's one dispatch
)
# Few keys, so that workers and jobs meet often; still enough to catch an offer across keys.
AGENTS = ("", "a", "a")
DEPLOYMENTS = ("", "", "", "d")
ROOMS = st.sampled_from(("r0", "r1", "r2"))
# Steps of 0.5 s keep every sum exact, so the model's deadlines compare as the engine's do.
TIME_STEPS = st.sampled_from((0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 25.0, 100.0))
# Around the reconnect grace (5 s): too late, back in time, just too late (the deadline is inclusive).
BOUNCE_DELAYS = st.sampled_from((6.0, 0.0, 1.0, 4.5, 5.0, 25.0))
MAX_LIVE_WORKERS = 5
MAX_JOBS = 40
UNKNOWN_JOB = "AJ_000000unknown"
D = TypeVar("D")
WORKER_SPECS = st.builds(
    WorkerSpec,
    agent_name=st.sampled_from(AGENTS),
    job_type=st.sampled_from([JobType.ROOM] * 6 + [JobType.PARTICIPANT, JobType.PUBLISHER]),
    deployment=st.sampled_from(DEPLOYMENTS),
)
ANSWERS = st.sampled_from(("accept", "accept", "accept as", "reject", "reject", "terminate", "ignore"))
UPDATES = st.sampled_from([JobUpdate.RUNNING] * 3 + [JobUpdate.SUCCESS, JobUpdate.FAILED])
ERRORS = st.sampled_from(("", "boom"))
STATUSES = st.sampled_from((WorkerStatus.AVAILABLE, WorkerStatus.AVAILABLE, WorkerStatus.FULL, None))
LOADS = st.sampled_from((0.0, 0.0, 0.1, 0.5, 0.79, 0.8, 1.0))
JOB_COUNTS = st.integers(0, 3)
KINDS = st.sampled_from((STANDARD, STANDARD, AGENT))
DISPATCH_SPECS = st.builds(
    DispatchSpec,
    agent_name=st.sampled_from(AGENTS),
    deployment=st.sampled_from(DEPLOYMENTS),
    restart_policy=st.sampled_from(RestartPolicy),
)
ROOM_AGENTS = st.lists(DISPATCH_SPECS, max_size=2)


def only(kind: type[D], decisions: list[Decision]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def job_key(job: Job) -> WorkerKey:
    return (job.agent_name, job.type, job.deployment)


def spec_key(spec: WorkerSpec) -> WorkerKey:
    return (spec.agent_name, spec.job_type, spec.deployment)


@dataclass
class FakeWorker:
    """A worker process as it knows itself: from the engine's messages and its own actions only."""

    spec: WorkerSpec
    worker_id: str = ""
    inbox: list[str] = field(default_factory=list)
    """Offers received and not answered (some may have been withdrawn meanwhile, which it cannot know)."""
    held: set[str] = field(default_factory=set)
    """Jobs it was assigned, or still runs after a reconnect, and was not told (or chose) to stop."""
    launching: set[str] = field(default_factory=set)
    """Held jobs not reported running yet: a termination of one of those may be missed."""
    late: set[str] = field(default_factory=set)
    """Jobs whose termination it missed while launching them: they may still start, late."""


@dataclass
class ExpectedAssign:
    worker_id: str
    job_id: str
    answer: AvailabilityAnswer
    seen: bool = False


class EngineMachine(RuleBasedStateMachine):
    engine_class: type[Engine] = Engine

    def __init__(self) -> None:
        super().__init__()
        # Ids in sequence, so that a failing example replays exactly (sets of ids iterate in hash order).
        counter = itertools.count()
        self._real_new_id = ids.new_id
        ids.new_id = lambda prefix: f"{prefix}{next(counter):012d}"
        self.e = self.engine_class(SETTINGS)
        self.now = 0.0
        self.steps = 0
        self.participants = itertools.count()
        self.live: dict[str, FakeWorker] = {}
        self.gone: list[FakeWorker] = []
        self.jobs: dict[str, Job] = {}
        """Every job ever created, collected from the rooms' dispatches and from the decisions."""
        self.open_offers: dict[str, tuple[str, float]] = {}
        """Job id -> (worker id, offered at): offers not yet answered, timed out, moved or ended."""
        self.expected_assign: ExpectedAssign | None = None
        self.misses_terminations = False
        """Whether a termination of a job being launched goes unnoticed (drawn per step)."""

    def teardown(self) -> None:
        ids.new_id = self._real_new_id

    # Feeding the model

    def collect(self) -> None:
        for room in self.e.rooms.values():
            for dispatch in room.dispatches.values():
                for job in dispatch.jobs:
                    self.jobs.setdefault(job.id, job)

    def apply(self) -> list[Decision]:
        """Take the engine's decisions and deliver them to the fake workers, checking each on the way."""
        decisions = self.e.take_decisions()
        # An offer withdrawn because its job ended may be followed, in the same step, by the next offer to
        # that worker before the JobEnded decision itself: the step is one atomic change.
        ending = {d.job.id for d in decisions if isinstance(d, JobEnded)}
        for decision in decisions:
            match decision:
                case OfferJob(worker_id, job, resuming):
                    self.jobs.setdefault(job.id, job)
                    fake = self.live.get(worker_id)
                    assert fake is not None and worker_id in self.e.workers, f"offer to unknown {worker_id}"
                    assert job_key(job) == spec_key(fake.spec), f"{job_key(job)} offered to {fake.spec}"
                    other = self.open_offers.get(job.id)
                    assert other is None or job.id in ending, f"{job.id} offered to {other} and {worker_id}"
                    busy = [j for j, (w, _) in self.open_offers.items() if w == worker_id and j not in ending]
                    assert not busy, f"{worker_id} asked about {job.id} while its offer of {busy} is open"
                    assert resuming == (job.restarts > 0)
                    assert not self.e.workers[worker_id].drained, f"{job.id} offered to drained {worker_id}"
                    self.open_offers[job.id] = (worker_id, self.now)
                    fake.inbox.append(job.id)
                case AssignJob(worker_id, job, participant):
                    expected = self.expected_assign
                    assert expected is not None and not expected.seen, f"unexpected assignment of {job.id}"
                    assert (worker_id, job.id) == (expected.worker_id, expected.job_id)
                    assert participant.identity == (expected.answer.identity or f"agent-{job.id}")
                    expected.seen = True
                    runs = [f.worker_id for f in self.live.values() if job.id in f.held]
                    assert not runs, f"{job.id} assigned to {worker_id} while {runs} still run it"
                    self.live[worker_id].held.add(job.id)
                    self.live[worker_id].launching.add(job.id)
                case TerminateJob(worker_id, job_id, reason):
                    assert worker_id in self.live and worker_id in self.e.workers, f"terminate to {worker_id}"
                    assert reason
                    fake = self.live[worker_id]
                    if job_id in fake.launching and self.misses_terminations:
                        fake.late.add(job_id)  # livekit-agents: no process for it yet, so nothing to stop
                    fake.held.discard(job_id)
                    fake.launching.discard(job_id)
                case JobEnded(job):
                    self.jobs.setdefault(job.id, job)
                    assert job.ended and job.ended_at is not None
                    assert job.status is JobStatus.SUCCEEDED or job.error, f"{job.id} failed without a reason"
                    self.open_offers.pop(job.id, None)
        self.collect()
        return decisions

    def workers_with(self, attribute: str) -> list[FakeWorker]:
        return [f for f in self.live.values() if getattr(f, attribute)]

    # Events, drawn by weight among those possible in the current state (a single rule rather than one
    # per event: Hypothesis' swarm testing would switch whole events off in most examples, and the
    # interesting sequences need most of them together).

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        self.steps += 1
        self.misses_terminations = data.draw(st.booleans(), label="terminations of launching jobs missed")
        event = data.draw(EVENT_NAMES.filter(lambda name: EVENTS[name][1](self)), label="event")
        getattr(self, event)(data)

    def answer(self, data: st.DataObject) -> None:
        fake = data.draw(st.sampled_from(self.workers_with("inbox")), label="worker")
        job_id = data.draw(st.sampled_from(fake.inbox), label="offer")
        action = data.draw(ANSWERS, label="answer")
        fake.inbox.remove(job_id)
        if action == "ignore":
            return  # it never answers: the availability timeout moves the job on
        answer = {
            "accept": AvailabilityAnswer(available=True),
            "accept as": AvailabilityAnswer(available=True, identity=f"bot-{job_id}", name="Bot"),
            "reject": AvailabilityAnswer(available=False),
            "terminate": AvailabilityAnswer(available=False, terminate=True),
        }[action]
        still_open = self.open_offers.get(job_id, ("", 0.0))[0] == fake.worker_id
        if answer.available:
            self.expected_assign = ExpectedAssign(fake.worker_id, job_id, answer)
        applied = self.e.availability_answer(fake.worker_id, job_id, answer, self.now)
        assert applied == still_open, f"answer to {job_id}: engine says {applied}, model says {still_open}"
        if applied:
            del self.open_offers[job_id]
        self.apply()
        if self.expected_assign is not None:
            assert self.expected_assign.seen == applied, f"accepted {job_id}: assignment missing or extra"
            self.expected_assign = None
        if applied and action == "terminate":
            assert self.jobs[job_id].status is JobStatus.SUCCEEDED

    def disconnect(self, data: st.DataObject) -> None:
        """The connection drops; the process may go on running its jobs and come back (reconnect)."""
        choices = self.workers_with("held")
        if not choices or data.draw(st.booleans(), label="any worker"):
            choices = list(self.live.values())
        fake = data.draw(st.sampled_from(choices), label="worker")
        self.connection_lost(fake)
        if fake.held and not data.draw(st.booleans(), label="the process dies too"):
            self.gone.append(fake)

    def reconnect(self, data: st.DataObject) -> None:
        self.comes_back(self.gone.pop(data.draw(st.integers(0, len(self.gone) - 1), label="process")), data)

    def bounce(self, data: st.DataObject) -> None:
        """A busy worker's connection drops and its process, still running its jobs, reconnects a little
        before, at, or after the end of the reconnect grace."""
        fake = data.draw(st.sampled_from(self.workers_with("held")), label="worker")
        self.connection_lost(fake)
        self.advance(data.draw(BOUNCE_DELAYS, label="seconds away"))
        self.comes_back(fake, data)

    def connection_lost(self, fake: FakeWorker) -> None:
        del self.live[fake.worker_id]
        for job_id, (worker_id, _) in list(self.open_offers.items()):
            if worker_id == fake.worker_id:
                del self.open_offers[job_id]
        fake.inbox.clear()
        self.e.worker_disconnected(fake.worker_id, self.now)
        self.apply()

    def comes_back(self, fake: FakeWorker, data: st.DataObject) -> None:
        """The process registers again and lists the jobs it still runs (MigrateJobRequest)."""
        fake.worker_id = self.e.register_worker(fake.spec, self.now).id
        self.live[fake.worker_id] = fake
        self.apply()  # the registration may bring offers before the worker's migrate arrives
        if data.draw(st.booleans(), label="reports instead of migrating"):
            self.reports_after_reconnect(fake)
            return
        listed = sorted(fake.held)
        if data.draw(st.booleans(), label="lists an unknown job"):
            listed.append(UNKNOWN_JOB)
        self.e.migrate_jobs(fake.worker_id, listed, self.now)
        for job_id in listed:
            self.withdrawn_if_taken_back(job_id)
        decisions = self.apply()
        stopped = {d.job_id for d in only(TerminateJob, decisions) if d.worker_id == fake.worker_id}
        assert UNKNOWN_JOB not in listed or UNKNOWN_JOB in stopped
        for job_id in listed:
            if job_id in stopped:
                continue
            job = self.jobs[job_id]
            assert (job.status, job.worker_id) == (JobStatus.RUNNING, fake.worker_id), (
                f"migrate of {job_id} by {fake.worker_id} neither re-attached it nor stopped the worker's "
                f"copy: the job is {job.status.value} on {job.worker_id or 'no worker'}"
            )

    def reports_after_reconnect(self, fake: FakeWorker) -> None:
        """Instead of migrating, the reconnected worker reports on its jobs: that claims the orphaned ones."""
        for job_id in sorted(fake.held):
            job = self.jobs[job_id]
            waiting = job.orphaned_at is not None or self.may_take_back(job, fake)
            claimed = self.e.job_update(fake.worker_id, job_id, JobUpdate.RUNNING, "", self.now)
            assert claimed == waiting, f"report on {job.status.value} {job_id} after reconnect: {claimed}"
            self.withdrawn_if_taken_back(job_id)
            fake.launching.discard(job_id)
            decisions = self.apply()
            if claimed:
                assert job.status is JobStatus.RUNNING and job.orphaned_at is None
                assert job.worker_id == fake.worker_id
            else:
                assert TerminateJob(fake.worker_id, job_id, "job is not this worker's") in decisions

    def withdrawn_if_taken_back(self, job_id: str) -> None:
        """A job taken back by the worker that runs it loses its open offer, to whichever worker."""
        if job_id in self.jobs and self.jobs[job_id].status is not JobStatus.OFFERED:
            self.open_offers.pop(job_id, None)

    def may_take_back(self, job: Job, fake: FakeWorker) -> bool:
        """The engine's rule, from the model's side: a restarted job not assigned since, whose previous
        copy may live, reported by that copy's worker (or by any worker of its key once that one is gone)."""
        if job.status not in (JobStatus.PENDING, JobStatus.OFFERED) or not job.attempts:
            return False
        previous = job.attempts[-1]
        return (
            previous.copy_may_live
            and job_key(job) == spec_key(fake.spec)
            and (previous.worker_id == fake.worker_id or previous.worker_id not in self.e.workers)
        )

    def late_start(self, data: st.DataObject) -> None:
        """A job whose termination was missed while it was being launched starts after all and says so:
        the engine takes the copy back if it may, and stops it again otherwise."""
        fake = data.draw(st.sampled_from(self.workers_with("late")), label="worker")
        job_id = data.draw(st.sampled_from(sorted(fake.late)), label="job")
        fake.late.discard(job_id)
        job = self.jobs[job_id]
        taken_back = self.may_take_back(job, fake)
        applied = self.e.job_update(fake.worker_id, job_id, JobUpdate.RUNNING, "", self.now)
        self.withdrawn_if_taken_back(job_id)
        decisions = self.apply()
        assert applied == taken_back, f"late start of {job_id} ({job.status.value}): {applied}"
        if applied:
            fake.held.add(job_id)
            assert (job.status, job.worker_id) == (JobStatus.RUNNING, fake.worker_id)
        else:
            assert TerminateJob(fake.worker_id, job_id, "job is not this worker's") in decisions

    def register(self, data: st.DataObject) -> None:
        fake = FakeWorker(data.draw(WORKER_SPECS, label="spec"))
        fake.worker_id = self.e.register_worker(fake.spec, self.now).id
        self.live[fake.worker_id] = fake
        self.apply()

    def report(self, data: st.DataObject) -> None:
        fake = data.draw(st.sampled_from(self.workers_with("held")), label="worker")
        job_id = data.draw(st.sampled_from(sorted(fake.held)), label="job")
        update = data.draw(UPDATES, label="update")
        error = data.draw(ERRORS, label="error")
        job = self.jobs[job_id]
        restarts = job.restarts
        fake.launching.discard(job_id)
        if update is not JobUpdate.RUNNING:
            fake.held.discard(job_id)  # the worker stopped it
        own = job.worker_id == fake.worker_id and job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING)
        taken_back = self.may_take_back(job, fake)
        applied = self.e.job_update(fake.worker_id, job_id, update, error, self.now)
        self.withdrawn_if_taken_back(job_id)
        self.apply()
        if not own:
            # The copy this worker kept after a start timeout: a start takes it back, an end forgets it.
            assert taken_back, f"{fake.worker_id} holds {job_id} ({job.status.value} on {job.worker_id})"
            assert applied == (update is JobUpdate.RUNNING)
            if applied:
                assert (job.status, job.worker_id) == (JobStatus.RUNNING, fake.worker_id)
            else:
                assert not job.attempts[-1].copy_may_live
            return
        assert applied, f"report on {job_id}"
        if update is JobUpdate.RUNNING:
            assert job.status is JobStatus.RUNNING and job.started_at is not None
        elif update is JobUpdate.SUCCESS:
            assert job.status is JobStatus.SUCCEEDED
        else:
            assert job.status is JobStatus.FAILED or job.restarts == restarts + 1
            ended = job.error if job.status is JobStatus.FAILED else job.attempts[-1].error
            assert ended.startswith(f"job failed on worker {fake.worker_id}")

    def status(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(list(self.live)), label="worker")
        status = data.draw(STATUSES, label="status")
        load = data.draw(LOADS, label="load")
        job_count = data.draw(JOB_COUNTS, label="job count")
        self.e.worker_status(worker_id, status, load, job_count, self.now)
        self.apply()

    def time_passes(self, data: st.DataObject) -> None:
        self.advance(data.draw(TIME_STEPS, label="seconds"))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for job_id, (_, offered_at) in list(self.open_offers.items()):
            if self.now >= offered_at + SETTINGS.availability_timeout:
                del self.open_offers[job_id]  # this tick moves the job on
        self.e.tick(self.now)
        self.apply()

    def create_dispatch(self, data: st.DataObject) -> None:
        room = data.draw(ROOMS, label="room")
        spec = data.draw(DISPATCH_SPECS, label="dispatch")
        if self.e.draining:
            with pytest.raises(Unavailable):
                self.e.create_dispatch(room, spec, self.now)
        elif len(self.jobs) < MAX_JOBS:
            self.e.create_dispatch(room, spec, self.now)
            self.apply()

    def create_room(self, data: st.DataObject) -> None:
        room = data.draw(ROOMS, label="room")
        agents = data.draw(ROOM_AGENTS, label="agents")
        if len(self.jobs) < MAX_JOBS and not self.e.draining:
            self.e.create_room(RoomSpec(name=room, agents=tuple(agents) or None), self.now)
            self.apply()

    def delete_dispatch(self, data: st.DataObject) -> None:
        pairs = [(room.name, d) for room in self.e.rooms.values() for d in room.dispatches]
        if pairs:
            room, dispatch_id = data.draw(st.sampled_from(pairs), label="dispatch")
            references = self.e.rooms[room].dispatches[dispatch_id].references
            dispatch = self.e.delete_dispatch(room, dispatch_id, self.now)
            self.apply()
            if references > 1:  # a shared singleton dispatch: one reference less, nothing else
                assert dispatch.references == references - 1 and dispatch.deleted_at is None
            else:
                assert all(job.ended for job in dispatch.jobs)

    def drain_worker(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(list(self.live)), label="worker")
        withdrawn = self.e.workers[worker_id].offered_job
        self.e.drain_worker(worker_id, self.now)
        if withdrawn:
            del self.open_offers[withdrawn]  # taken back; the worker cannot know (it stays in its inbox)
        self.apply()

    def undrain_worker(self, data: st.DataObject) -> None:
        drained = [w.id for w in self.e.workers.values() if w.drained]
        self.e.undrain_worker(data.draw(st.sampled_from(drained), label="worker"), self.now)
        self.apply()

    def delete_room(self, data: st.DataObject) -> None:
        if self.e.rooms:
            room = self.e.delete_room(data.draw(st.sampled_from(list(self.e.rooms)), label="room"), self.now)
            self.apply()
            assert all(job.ended for dispatch in room.dispatches.values() for job in dispatch.jobs)

    def participant_joins(self, data: st.DataObject) -> None:
        if self.e.rooms and len(self.jobs) < MAX_JOBS:
            room = data.draw(st.sampled_from(list(self.e.rooms)), label="room")
            kind = data.draw(KINDS, label="kind")
            identity = f"p{next(self.participants)}"
            participant = Participant(identity, f"PA_{identity}", self.now, kind=kind)
            self.e.participant_joined(room, participant, self.now)
            if data.draw(st.booleans(), label="publishes"):
                self.e.track_published(room, identity, Track(f"TR_{identity}", "audio"), self.now)
            self.apply()

    def participant_leaves(self, data: st.DataObject) -> None:
        pairs = [(room.name, p) for room in self.e.rooms.values() for p in room.participants]
        if pairs:
            room, identity = data.draw(st.sampled_from(pairs), label="participant")
            self.e.participant_left(room, identity, self.now)
            self.apply()

    def report_on_a_job_not_held(self, data: st.DataObject) -> None:
        """Reports on jobs a worker does not hold change nothing (orphaned ones excepted: see reconnect)."""
        if self.live:
            fake = data.draw(st.sampled_from(list(self.live.values())), label="worker")
            others = [
                job_id
                for job_id, job in self.jobs.items()
                if job_id not in fake.held | fake.late
                and job.orphaned_at is None
                and job.worker_id != fake.worker_id
                and not self.may_take_back(job, fake)
            ]
            job_id = data.draw(st.sampled_from([*others, UNKNOWN_JOB]), label="job")
            update = data.draw(UPDATES, label="update")
            assert not self.e.job_update(fake.worker_id, job_id, update, "", self.now)
            # Claiming to run a job it does not hold: told to stop it; other reports change nothing.
            expected = [TerminateJob(fake.worker_id, job_id, "job is not this worker's")]
            assert self.apply() == (expected if update is JobUpdate.RUNNING else [])

    def process_dies(self, data: st.DataObject) -> None:
        """A disconnected process is gone for good, and its jobs with it."""
        if self.gone:
            self.gone.pop(data.draw(st.integers(0, len(self.gone) - 1), label="process"))

    def drain(self, data: st.DataObject) -> None:
        """As the server drains: no new work, and the jobs of rooms nobody is in end at once."""
        self.e.drain()
        self.apply()
        self.end_unattended(data)

    def end_unattended(self, data: st.DataObject) -> None:
        """While draining (again and again, as rooms empty): the jobs of rooms with no non-agent participant
        end, their workers told to stop what they run; jobs of other rooms go on."""
        unattended = {room.name for room in self.e.rooms.values() if not room.num_participants}
        others = {job.id for job in self.e.jobs.values() if job.room not in unattended}
        running = {
            (f.worker_id, job_id)
            for f in self.live.values()
            for job_id in f.held
            if self.jobs[job_id].room in unattended
        }
        self.e.end_unattended_jobs(self.now)
        decisions = self.apply()
        assert running <= {(d.worker_id, d.job_id) for d in only(TerminateJob, decisions)}
        assert set(self.e.jobs) == others
        assert not any(self.jobs[job_id].room in unattended for f in self.live.values() for job_id in f.held)

    def shut_down(self, data: st.DataObject) -> None:
        """As the server stops: drain, then end every job; the workers are told to stop what they run."""
        self.e.drain()
        running = {(f.worker_id, job_id) for f in self.live.values() for job_id in f.held}
        self.e.shut_down(self.now)
        decisions = self.apply()
        assert {(d.worker_id, d.job_id) for d in only(TerminateJob, decisions)} == running
        assert self.e.jobs == {} and all(job.ended for job in self.jobs.values())
        assert not any(f.held for f in self.live.values())

    # Invariants

    def holders(self, job_id: str) -> list[str]:
        return [w.id for w in self.e.workers.values() if job_id in w.jobs]

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        self.collect()
        e = self.e
        for job in self.jobs.values():
            key = job_key(job)
            pending = job.id in e._pending.get(key, {})
            holders = self.holders(job.id)
            where = f"{job.id} {job.status.value} worker={job.worker_id or '-'} holders={holders}"
            if job.ended:
                assert job.id not in e.jobs and not pending and not holders, where
                assert job.ended_at is not None and job.orphaned_at is None, where
                assert job.status is JobStatus.SUCCEEDED or job.error, f"{where}: failed without a reason"
                continue
            assert e.jobs.get(job.id) is job, f"{where}: lost"
            if job.status is JobStatus.PENDING:
                assert pending and not holders and job.worker_id == "" and job.orphaned_at is None, where
            elif job.status is JobStatus.OFFERED:
                assert not pending and holders == [job.worker_id] and job.orphaned_at is None, where
                worker = e.workers[job.worker_id]
                assert worker.key == key and worker.offered_job == job.id, where
            else:
                assert not pending, where
                if job.orphaned_at is None:
                    assert holders == [job.worker_id], where
                    assert e.workers[job.worker_id].key == key, where
                else:
                    assert job.worker_id not in e.workers and not holders, f"{where}: orphaned"
                assert job.status is not JobStatus.RUNNING or job.started_at is not None, where

    @invariant()
    def engine_bookkeeping_agrees(self) -> None:
        self.collect()
        e = self.e
        assert set(e.jobs) == {job.id for job in self.jobs.values() if not job.ended}
        for key, jobs in e._pending.items():
            for job_id, job in jobs.items():
                assert job.status is JobStatus.PENDING and e.jobs.get(job_id) is job and job_key(job) == key
        assert set(e.workers) == set(self.live)
        by_key = {w_id for peers in e._workers_by_key.values() for w_id in peers}
        assert by_key == set(e.workers) and all(peers for peers in e._workers_by_key.values())
        for worker in e.workers.values():
            own = [j for j in e.jobs.values() if j.worker_id == worker.id and j.orphaned_at is None]
            assert worker.jobs == {j.id for j in own}, f"{worker.id} holds {worker.jobs}, jobs say {own}"
            offered = [j.id for j in own if j.status is JobStatus.OFFERED]
            assert len(offered) <= 1 and worker.offered_job == (offered[0] if offered else "")

    @invariant()
    def model_agrees_with_engine(self) -> None:
        offered = [j for j in self.e.jobs.values() if j.status is JobStatus.OFFERED]
        engine_offers = {j.id: (j.worker_id, j.offered_at) for j in offered}
        assert engine_offers == self.open_offers, f"engine offers {engine_offers}, model {self.open_offers}"
        runs: dict[str, str] = {}
        kept: dict[str, str] = {}
        for fake in self.live.values():
            for job_id in fake.held:
                assert job_id not in runs, f"{job_id} runs on both {runs[job_id]} and {fake.worker_id}"
                runs[job_id] = fake.worker_id
                job = self.jobs[job_id]
                if job.status in (JobStatus.PENDING, JobStatus.OFFERED):
                    assert self.may_take_back(job, fake), f"{fake.worker_id} runs a stale copy of {job_id}"
                    kept[job_id] = fake.worker_id
        engine_runs = {
            j.id: j.worker_id
            for j in self.e.jobs.values()
            if j.status in (JobStatus.ASSIGNED, JobStatus.RUNNING) and j.orphaned_at is None
        }
        assert {j: w for j, w in runs.items() if j not in kept} == engine_runs

    @invariant()
    def a_singleton_agent_has_at_most_one_live_dispatch_per_room(self) -> None:
        for room in self.e.rooms.values():
            for name in SETTINGS.singleton_agents:
                live = [d.id for d in room.dispatches.values() if d.agent_name == name and d.live]
                assert len(live) <= 1, f"{room.name} has live dispatches {live} of singleton '{name}'"

    @invariant()
    def nothing_waits_for_nothing(self) -> None:
        e = self.e
        for job in e.jobs.values():
            on_live_worker = job.status is JobStatus.RUNNING and job.orphaned_at is None
            assert on_live_worker or e._job_deadline(job) is not None, f"{job.id} can wait forever"
            if job.status is JobStatus.PENDING and not e.draining and job.retry_at is None:
                workers = e._workers_by_key.get(job_key(job), {}).values()
                idle = choose_worker(job, workers, SETTINGS.load_threshold)
                assert idle is None, f"{job.id} waits while {idle and idle.id} could take it"


def _always(_: EngineMachine) -> bool:
    return True


EVENTS: dict[str, tuple[int, Callable[[EngineMachine], bool]]] = {
    # name: (weight, possible in this state)
    "answer": (6, lambda m: any(f.inbox for f in m.live.values())),
    "report": (2, lambda m: any(f.held for f in m.live.values())),
    "register": (3, lambda m: len(m.live) < MAX_LIVE_WORKERS),
    "late_start": (2, lambda m: any(f.late for f in m.live.values())),
    "status": (3, lambda m: bool(m.live)),
    "time_passes": (4, _always),
    "create_dispatch": (3, _always),
    "disconnect": (3, lambda m: bool(m.live)),
    "reconnect": (3, lambda m: bool(m.gone)),
    "bounce": (3, lambda m: any(f.held for f in m.live.values())),
    "create_room": (1, _always),
    "delete_dispatch": (1, lambda m: any(room.dispatches for room in m.e.rooms.values())),
    "delete_room": (1, lambda m: bool(m.e.rooms)),
    "participant_joins": (1, lambda m: bool(m.e.rooms)),
    "participant_leaves": (1, lambda m: any(room.participants for room in m.e.rooms.values())),
    "report_on_a_job_not_held": (1, lambda m: bool(m.live)),
    "process_dies": (1, lambda m: bool(m.gone)),
    "drain_worker": (1, lambda m: bool(m.live)),
    "undrain_worker": (1, lambda m: any(w.drained for w in m.e.workers.values())),
    "drain": (1, lambda m: m.steps > 25 and not m.e.draining),
    "shut_down": (1, lambda m: m.steps > 30),
    "end_unattended": (1, lambda m: m.e.draining),
}

# Drawn from one fixed list (filtered by what is possible now), so that each draw keeps its meaning when
# the shrinker removes earlier steps.
EVENT_NAMES = st.sampled_from([name for name, (weight, _) in EVENTS.items() for _ in range(weight)])

TestEngineProperties = EngineMachine.TestCase
TestEngineProperties.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    # No explain phase: on this machine it takes minutes to annotate a failing example that shrinking
    # found in seconds.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
