"""The store's records (what each decision changes, and the room they read back as) and the engine's
restore of a room whose node was lost: pure, no Redis."""

from typing import get_args

from switchboard.cluster.store import Changes, Kept, changes_for, stored_room
from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, RoomSpec
from switchboard.core.events import Decision, JobEnded, JobQueued, RoomStarted, TerminateJob
from switchboard.core.jobs import JobStatus
from switchboard.core.workers import JobUpdate
from tests.unit.test_dispatch_engine import ACCEPT, NEVER, make, offers, only, worker

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
    e.restore_room(stored.room, stored.dispatches, LOST, now)


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
