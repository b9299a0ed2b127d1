"""The store's records (what each decision changes, and the room they read back as) and the engine's
restore of a room whose node was lost: pure, no Redis."""

from typing import get_args

from switchboard.cluster.store import Changes, Kept, changes_for, stored_room
from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, RoomSpec
from switchboard.core.events import (
    Decision,
    JobChanged,
    JobEnded,
    JobQueued,
    OfferJob,
    RoomStarted,
    TerminateJob,
)
from switchboard.core.jobs import JobStatus
from switchboard.core.workers import JobUpdate, WorkerSpec
from tests.unit.test_dispatch_engine import ACCEPT, NEVER, agent_of, make, offers, only, worker

NODE = "ND_lost"
LOST = "node lost: node ND_lost, where the room was, stopped"


class Record:
    """A room's record as Redis holds it after the store's writes (the Lua script's effect, modelled)."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, str]] = {}

    def keep(self, decisions: list[Decision]) -> None:
        """One engine call's decisions: coalesced per room as the store does (its writer cannot run in
        the middle of a call), then written."""
        pending: dict[str, Changes] = {}
        for decision in decisions:
            if isinstance(decision, get_args(Kept)):
                room, changes = changes_for(decision, NODE)
                pending.setdefault(room, Changes()).then(changes)
        for room, changes in pending.items():
            fields = {} if changes.reset else self.rooms.get(room, {})
            for key, value in changes.fields.items():
                if value is None:
                    fields.pop(key, None)
                else:
                    fields[key] = value
            if fields:
                self.rooms[room] = fields
            else:
                self.rooms.pop(room, None)


def kept_engine(record: Record, **overrides: object) -> Engine:
    """An engine whose decisions are kept in `record` as they are taken."""
    e = make(**overrides)
    take = e.take_decisions

    def take_and_keep() -> list[Decision]:
        decisions = take()
        record.keep(decisions)
        return decisions

    e.take_decisions = take_and_keep  # type: ignore[method-assign]
    return e


def restored(record: Record, room: str, e: Engine, now: float) -> None:
    stored = stored_room(room, record.rooms[room])
    assert stored is not None and stored.node_id == NODE
    e.restore_room(stored.room, stored.dispatches, LOST, now, stored.node_id)


def test_a_room_reads_back_as_it_was_kept_with_its_dispatch_ids_specs_and_job_states() -> None:
    record = Record()
    a = kept_engine(record, singleton_agents=frozenset({"solo"}))
    w = worker(a, "a")
    a.create_room(RoomSpec(name="r", empty_timeout=77, metadata="room meta"), 1.0)
    spec = DispatchSpec("a", "meta", RestartPolicy.NEVER, "", {"k": "v"})
    running = a.create_dispatch("r", spec, 2.0)
    solo = a.create_dispatch("r", DispatchSpec("solo"), 3.0)
    a.create_dispatch("r", DispatchSpec("solo"), 4.0)  # a second reference to the same dispatch
    gone = a.create_dispatch("r", DispatchSpec("b"), 5.0)
    a.availability_answer(w, running.jobs[0].id, ACCEPT, 6.0)
    a.job_update(w, running.jobs[0].id, JobUpdate.RUNNING, "", 7.0)
    a.delete_dispatch("r", gone.id, 8.0)
    a.take_decisions()

    stored = stored_room("r", record.rooms["r"])
    assert stored is not None
    room = a.rooms["r"]
    assert (stored.room.sid, stored.room.created_at, stored.room.empty_timeout, stored.room.metadata) == (
        room.sid,
        1.0,
        77,
        "room meta",
    )
    by_id = {d.id: d for d in stored.dispatches}
    assert set(by_id) == set(room.dispatches)  # the implicit one too; not the deleted one
    assert by_id[running.id].spec == spec and by_id[solo.id].references == 2
    [job] = by_id[running.id].jobs
    original = running.jobs[0]
    assert (job.id, job.status, job.worker_id, job.agent_identity, job.started_at) == (
        original.id,
        JobStatus.RUNNING,
        w,
        original.agent_identity,
        7.0,
    )


def test_closing_a_room_drops_its_record_and_a_new_room_of_that_name_starts_afresh() -> None:
    record = Record()
    e = kept_engine(record)
    e.create_dispatch("r", DispatchSpec("a"), 0.0)
    e.delete_room("r", 1.0)
    e.take_decisions()
    assert "r" not in record.rooms
    e.create_dispatch("r", DispatchSpec("b"), 2.0)
    e.take_decisions()
    stored = stored_room("r", record.rooms["r"])
    assert stored is not None and {d.agent_name for d in stored.dispatches} == {"", "b"}


def test_changes_coalesce_a_later_value_wins_and_a_reset_or_a_hand_over_drops_what_came_before() -> None:
    changes = Changes(fields={"job:1": "a", "job:2": "b"})
    changes.then(Changes(fields={"job:1": "c", "job:3": None}))
    assert changes == Changes(fields={"job:1": "c", "job:2": "b", "job:3": None})
    changes.then(Changes(reset=True, fields={"room": "r"}))
    assert changes == Changes(reset=True, fields={"room": "r"})
    changes.then(Changes(fields={"dispatch:1": "d"}))
    assert changes.script_args("ND_1")[2:] == ["1", "2", "room", "r", "dispatch:1", "d"]
    assert Changes(fields={"x": None, "y": "v"}).script_args("ND_1")[2:] == ["0", "1", "y", "v", "x"]
    changes.then(Changes(dropped=True))  # handed over: nothing pending is written, nothing deleted
    assert changes.script_args("ND_1")[2:] == ["0", "0"]


def test_restore_relaunches_live_jobs_by_their_policy_and_leaves_ended_ones_ended() -> None:
    record = Record()
    a = kept_engine(record)
    w = worker(a, "a")
    again = a.create_dispatch("r", DispatchSpec("a"), 0.0)
    once = a.create_dispatch("r", DispatchSpec("a", restart_policy=NEVER), 0.0)
    finished = a.create_dispatch("r", DispatchSpec("a"), 0.0)
    waiting = a.create_dispatch("r", DispatchSpec("nobody"), 0.0)
    for dispatch in (again, once, finished):
        a.availability_answer(w, dispatch.jobs[0].id, ACCEPT, 1.0)
        a.job_update(w, dispatch.jobs[0].id, JobUpdate.RUNNING, "", 2.0)
    a.job_update(w, finished.jobs[0].id, JobUpdate.SUCCESS, "", 3.0)
    a.take_decisions()

    b = make(restart_backoff=1.0)  # the node that takes the room over
    restored(record, "r", b, 100.0)
    room = b.rooms["r"]
    assert set(room.dispatches) == set(a.rooms["r"].dispatches)
    [job] = room.dispatches[again.id].jobs
    assert (job.id, job.status, job.attempt, job.retry_at) == (again.jobs[0].id, JobStatus.PENDING, 2, 101.0)
    assert job.attempts[0].error == LOST and job.attempts[0].worker_id == w
    [job] = room.dispatches[once.id].jobs
    assert (job.status, job.error) == (JobStatus.FAILED, LOST) and job.id not in b.jobs
    [job] = room.dispatches[finished.id].jobs
    assert job.status is JobStatus.SUCCEEDED and job.id not in b.jobs
    [job] = room.dispatches[waiting.id].jobs
    assert (job.status, job.attempt, job.pending_since) == (JobStatus.PENDING, 1, 100.0)
    decisions = b.take_decisions()
    assert isinstance(decisions[0], RoomStarted) and decisions[0].restored and decisions[0].sid == room.sid
    assert {d.job.dispatch_id for d in only(JobQueued, decisions)} == {again.id, waiting.id, room_auto(b)}

    # A worker of the agent on the new node gets the relaunched job once its back-off is over.
    w2 = worker(b, "a", 100.5)
    assert offers(b) == []
    b.tick(101.0)
    [offer] = offers(b)
    assert (offer.worker_id, offer.job.id, offer.resuming) == (w2, again.jobs[0].id, True)


def room_auto(e: Engine) -> str:
    return next(d.id for d in e.rooms["r"].dispatches.values() if d.agent_name == "")


def running_job(record: Record) -> tuple[Engine, str, str]:
    """An engine kept in `record`, with a dispatch of agent "a" in room "r" whose job runs: the engine,
    the worker and the job."""
    a = kept_engine(record)
    w = worker(a, "a")
    dispatch = a.create_dispatch("r", DispatchSpec("a"), 0.0)
    job_id = dispatch.jobs[0].id
    a.availability_answer(w, job_id, ACCEPT, 1.0)
    a.job_update(w, job_id, JobUpdate.RUNNING, "", 2.0)
    a.take_decisions()
    return a, w, job_id


def test_the_lost_attempts_copy_is_taken_back_when_its_worker_comes_with_it() -> None:
    record = Record()
    _, _, job_id = running_job(record)
    b = make(restart_backoff=5.0)
    restored(record, "r", b, 100.0)
    moved = worker(b, "a", 100.5)  # the same worker, reconnected to the new node, still running the job
    b.migrate_jobs(moved, [job_id], 100.5)
    job = b.jobs[job_id]
    assert (job.status, job.worker_id, job.attempt, job.attempts) == (JobStatus.RUNNING, moved, 1, [])


def restored_where_its_worker_is(
    record: Record, job_id: str, w: str, now: float, restart_backoff: float = 0.0
) -> Engine:
    """The room restored on a node that `w`, the worker that ran the job, is still connected to (or
    known on, connected to a third node): its copy's agent joined the lost node."""
    # A start timeout within the room's departure timeout (20 s).
    b = make(restart_backoff=restart_backoff, start_timeout=10.0)
    b.register_worker(WorkerSpec(agent_name="a"), now - 1, worker_id=w)
    b.take_decisions()
    restored(record, "r", b, now)
    decisions = b.take_decisions()
    assert TerminateJob(w, job_id, LOST) in decisions, "the copy can only rejoin the lost node: stopped"
    return b


def test_a_restored_jobs_copy_on_a_connected_worker_is_stopped_and_the_job_waits_for_its_end_there() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    assert offers(b) == [], "not offered where the copy being stopped runs under the same job id"
    [explained] = [x for x in b.explain("r", "", 100.5) if x.job_id == job_id]
    assert [v.why for v in explained.workers] == [
        "is stopping an earlier copy of it, and has not reported that copy's end"
    ]

    # The stopped copy's final report: not the new attempt's; the worker is free for the job again.
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 101.0)
    job = b.jobs[job_id]
    assert (job.status, job.attempt, len(job.attempts)) == (JobStatus.OFFERED, 2, 1)
    [offer] = offers(b)
    assert (offer.worker_id, offer.job.id, offer.resuming) == (w, job_id, True)
    b.availability_answer(w, job_id, ACCEPT, 101.5)
    b.job_update(w, job_id, JobUpdate.RUNNING, "", 102.0)
    assert (job.status, job.worker_id, job.attempt) == (JobStatus.RUNNING, w, 2)


def test_a_worker_of_the_lost_node_not_yet_found_lost_here_is_not_taken_for_connected() -> None:
    """The room is restored before this node's own look finds its node lost: that node's workers, still
    registered here, are gone with it. Their copies are not stopped; a worker that reconnects with one
    (migrate_job) has it taken back."""
    record = Record()
    _, w, job_id = running_job(record)
    b = make(restart_backoff=0.0)
    b.register_worker(WorkerSpec(agent_name="a", node=NODE), 99.0, worker_id=w)
    restored(record, "r", b, 100.0)
    decisions = b.take_decisions()
    assert only(TerminateJob, decisions) == []
    job = b.jobs[job_id]
    assert job.stopping == {} and job.attempts[-1].copy_may_live
    b.worker_disconnected(w, 100.5, lost=f"worker {w}'s node {NODE} was lost")
    back = worker(b, "a", 101.0)
    b.migrate_jobs(back, [job_id], 101.0)
    assert (job.status, job.worker_id, job.attempt) == (JobStatus.RUNNING, back, 1)


def test_a_copy_whose_end_was_reported_to_the_lost_node_frees_its_worker_when_told() -> None:
    """The copy had ended by itself, and reported it to the node that then died: the worker's node says
    so (cluster/workers.py), as the worker would have."""
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    assert not b.copy_ended("AW_other", job_id, 100.5), "not the worker it waits for"
    assert b.copy_ended(w, job_id, 101.0)
    assert [o.worker_id for o in offers(b)] == [w]
    assert not b.copy_ended(w, job_id, 101.5), "told once"


def test_without_the_stopped_copys_end_its_worker_is_offered_the_job_after_the_start_timeout() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    assert b.next_deadline() == 110.0
    b.tick(109.9)
    assert offers(b) == []
    b.tick(110.0)
    [offer] = offers(b)
    assert offer.worker_id == w and b.jobs[job_id].stopping == {}


def test_another_worker_takes_the_restored_job_at_once() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = make(restart_backoff=0.0)
    b.register_worker(WorkerSpec(agent_name="a"), 99.0, worker_id=w)
    other = worker(b, "a", 99.5)
    restored(record, "r", b, 100.0)
    [offer] = only(OfferJob, b.take_decisions())
    assert (offer.worker_id, offer.job.id) == (other, job_id)


def test_a_worker_that_does_not_report_on_its_jobs_is_offered_the_restored_job_at_once() -> None:
    """The Node framework reports nothing on its jobs (followed through its agent instead): no report
    of the stopped copy can be taken for the new one's, and none would come."""
    record = Record()
    a = kept_engine(record)
    w = worker(a, "a")
    job = a.create_dispatch("r", DispatchSpec("a"), 0.0).jobs[0]
    a.availability_answer(w, job.id, ACCEPT, 1.0)
    a.participant_joined("r", agent_of(job), 2.0)  # running: its agent joined, no report
    a.take_decisions()
    b = make(restart_backoff=0.0)
    b.register_worker(WorkerSpec(agent_name="a"), 99.0, worker_id=w)
    restored(record, "r", b, 100.0)
    decisions = b.take_decisions()
    assert TerminateJob(w, job.id, LOST) in decisions
    [offer] = only(OfferJob, decisions)
    assert offer.worker_id == w


def test_a_first_report_after_the_agent_joined_is_kept_so_a_restore_waits_for_the_copys_end() -> None:
    """livekit-agents reports on its job, but its agent may join the room's node before the report
    (relayed through Redis) arrives: the report still reaches the record."""
    record = Record()
    a = kept_engine(record)
    w = worker(a, "a")
    job = a.create_dispatch("r", DispatchSpec("a"), 0.0).jobs[0]
    a.availability_answer(w, job.id, ACCEPT, 1.0)
    a.participant_joined("r", agent_of(job), 2.0)
    a.job_update(w, job.id, JobUpdate.RUNNING, "", 2.5)
    assert JobChanged(job) in a.take_decisions()
    b = restored_where_its_worker_is(record, job.id, w, 100.0)
    assert offers(b) == [] and set(b.jobs[job.id].stopping) == {w}


def test_an_assigned_copy_not_launched_yet_is_stopped_again_once_it_says_it_runs() -> None:
    """Assigned when the room's node died: livekit-agents ignores a termination of a job it has not
    launched yet. When that copy reports running, it is stopped again, and the job waits for its end."""
    record = Record()
    a = kept_engine(record)
    w = worker(a, "a")
    job_id = a.create_dispatch("r", DispatchSpec("a"), 0.0).jobs[0].id
    a.availability_answer(w, job_id, ACCEPT, 1.0)
    a.take_decisions()
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    assert b.job_update(w, job_id, JobUpdate.RUNNING, "", 100.5)
    [terminate] = only(TerminateJob, b.take_decisions())
    assert (terminate.worker_id, terminate.job_id) == (w, job_id)
    job = b.jobs[job_id]
    assert (job.status, job.attempt, set(job.stopping)) == (JobStatus.PENDING, 2, {w}), "not taken back"
    assert b.job_update(w, job_id, JobUpdate.SUCCESS, "", 101.0)
    assert [o.worker_id for o in offers(b)] == [w]
    assert job.status is JobStatus.OFFERED and job.attempt == 2, "the copy's success is not the job's"


def test_the_stopped_copys_end_while_another_worker_runs_the_job_changes_nothing_there() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    other = worker(b, "a", 100.5)
    [offer] = offers(b)
    assert offer.worker_id == other
    b.availability_answer(other, job_id, ACCEPT, 101.0)
    b.job_update(other, job_id, JobUpdate.RUNNING, "", 101.5)
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 102.0)
    job = b.jobs[job_id]
    assert (job.status, job.worker_id, job.attempt, job.stopping) == (JobStatus.RUNNING, other, 2, {})


def test_with_a_back_off_the_job_waits_for_both_the_back_off_and_the_copys_end() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0, restart_backoff=5.0)
    b.tick(105.0)  # the back-off is over; the copy has not ended yet
    assert offers(b) == []
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 106.0)
    assert [o.worker_id for o in offers(b)] == [w]


def test_the_job_does_not_fail_for_want_of_a_worker_while_one_is_held_back() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = make(restart_backoff=0.0, start_timeout=10.0, pending_timeout=5.0)
    b.register_worker(WorkerSpec(agent_name="a"), 99.0, worker_id=w)
    restored(record, "r", b, 100.0)
    b.take_decisions()
    b.tick(106.0)  # past the pending timeout (the automatic dispatch's job fails: no worker at all)
    job = b.jobs[job_id]
    assert job.status is JobStatus.PENDING
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 107.0)
    assert [o.worker_id for o in offers(b)] == [w]


def test_a_copy_that_ends_before_the_back_off_does_not_cut_it_short() -> None:
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0, restart_backoff=5.0)
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 101.0)
    assert offers(b) == []
    b.tick(105.0)
    assert [o.worker_id for o in offers(b)] == [w]


def test_two_workers_stopping_copies_of_one_job_are_both_waited_for() -> None:
    """The worker of the lost attempt, and one that reconnected listing another copy: neither is offered
    the job before its own copy's end."""
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    listing = worker(b, "a", 100.5)
    b.take_decisions()
    b.migrate_jobs(listing, [job_id], 100.6)
    assert only(OfferJob, b.take_decisions()) == []
    assert b.job_update(w, job_id, JobUpdate.FAILED, "", 101.0)
    assert [o.worker_id for o in offers(b)] == [w]
    assert set(b.jobs[job_id].stopping) == {listing}


def test_a_reconnected_worker_listing_a_restarted_jobs_copy_is_not_offered_the_job_before_its_end() -> None:
    """A worker that reconnects (a new id) lists a copy that is not taken back (the job was restarted and
    that copy is not revivable): it is stopped, and the job is not offered to that worker before its
    end, which names the job only."""
    record = Record()
    _, w, job_id = running_job(record)
    b = restored_where_its_worker_is(record, job_id, w, 100.0)
    b.worker_disconnected(w, 100.2)
    again = worker(b, "a", 100.5)
    b.take_decisions()
    b.migrate_jobs(again, [job_id], 100.6)
    decisions = b.take_decisions()
    assert TerminateJob(again, job_id, "job was restarted") in decisions
    assert only(OfferJob, decisions) == []
    assert b.job_update(again, job_id, JobUpdate.SUCCESS, "", 101.0)
    assert [o.worker_id for o in offers(b)] == [again]


def test_a_restored_room_waits_the_departure_timeout_for_its_participants_and_a_live_room_is_kept() -> None:
    record = Record()
    a = kept_engine(record)
    a.create_room(RoomSpec(name="r", departure_timeout=30), 0.0)
    a.take_decisions()
    b = make()
    restored(record, "r", b, 1000.0)  # long after its empty timeout, counted from its creation
    assert b.next_deadline() == 1030.0
    b.tick(1029.0)
    assert "r" in b.rooms
    live = b.rooms["r"]
    restored(record, "r", b, 1029.5)
    assert b.rooms["r"] is live


def test_a_room_handed_over_keeps_its_record_as_it_was_for_the_node_that_takes_it_over() -> None:
    record = Record()
    a, w, job_id = running_job(record)
    kept = dict(record.rooms["r"])

    a.hand_over_rooms("node lease lost", 3.0)
    decisions = a.take_decisions()
    assert (
        "r" not in a.rooms
        and TerminateJob(w, job_id, "terminated: room closed (node lease lost)") in decisions
    )
    assert record.rooms["r"] == kept  # the job stopped here is still running for the next node
    ended = [d for d in decisions if isinstance(d, JobEnded)]
    assert job_id in {d.job.id for d in ended}
    assert all(d.handed_over for d in ended), "not an end for the cluster: webhooks and metrics leave it out"

    b = make(restart_backoff=0.0)
    restored(record, "r", b, 10.0)
    job = b.jobs[job_id]
    assert (job.status, job.attempt, job.attempts[0].error) == (JobStatus.PENDING, 2, LOST)
