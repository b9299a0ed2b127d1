"""Rooms, dispatches and their timeouts, with time passed in."""

import pytest

from switchboard.core.dispatch import DispatchSpec, RestartPolicy
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.errors import InvalidArgument, NotFound, ResourceExhausted
from switchboard.core.events import (
    DisconnectCause,
    DisconnectParticipant,
    DispatchCreated,
    DispatchDeleted,
    JobEnded,
    JobQueued,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomStarted,
)
from switchboard.core.jobs import JobStatus, JobType
from switchboard.core.limits import Limits
from switchboard.core.rooms import AGENT, Participant


def engine(**settings: object) -> Engine:
    return Engine(EngineSettings(**settings))  # type: ignore[arg-type]


def person(identity: str, now: float = 0.0, kind: str = "standard") -> Participant:
    return Participant(identity=identity, sid=f"PA_{identity}", joined_at=now, kind=kind)


def test_new_room_gets_sid_defaults_and_the_implicit_automatic_dispatch() -> None:
    e = engine()
    room = e.create_room(RoomSpec(name="r"), now=100.0)
    assert room.sid.startswith("RM_") and len(room.sid) == 15
    assert (room.empty_timeout, room.departure_timeout, room.created_at) == (300, 20, 100.0)
    [dispatch] = room.dispatches.values()
    assert dispatch.agent_name == "" and dispatch.id.startswith("AD_")
    [job] = dispatch.jobs
    assert job.type is JobType.ROOM and job.status is JobStatus.PENDING and job.id.startswith("AJ_")
    assert e.take_decisions() == [
        RoomStarted("r", room.sid),
        DispatchCreated("r", dispatch.id, ""),
        JobQueued(job),
    ]


def test_room_with_agents_has_no_implicit_dispatch_and_keeps_request_values() -> None:
    e = engine()
    spec = RoomSpec(
        name="r",
        empty_timeout=10,
        departure_timeout=5,
        max_participants=3,
        metadata="m",
        agents=(DispatchSpec(agent_name="a", metadata="x"), DispatchSpec(agent_name="b")),
    )
    room = e.create_room(spec, now=0.0)
    assert [d.agent_name for d in room.dispatches.values()] == ["a", "b"]
    assert (room.empty_timeout, room.departure_timeout, room.max_participants, room.metadata) == (
        10,
        5,
        3,
        "m",
    )


def test_creating_a_live_room_again_returns_it_unchanged() -> None:
    e = engine()
    first = e.create_room(RoomSpec(name="r"), now=0.0)
    again = e.create_room(RoomSpec(name="r", metadata="other", agents=(DispatchSpec("a"),)), now=1.0)
    assert again is first and again.metadata == "" and len(again.dispatches) == 1


def test_create_dispatch_creates_the_missing_room_with_the_implicit_dispatch_too() -> None:
    e = engine()
    dispatch = e.create_dispatch("r", DispatchSpec(agent_name="a", metadata="m", attributes={"k": "v"}), 5.0)
    room = e.room("r")
    assert dispatch.id in room.dispatches and len(room.dispatches) == 2
    assert dispatch.spec.attributes == {"k": "v"} and dispatch.created_at == 5.0
    assert dispatch.spec.restart_policy is RestartPolicy.ON_FAILURE
    assert [j.type for j in dispatch.jobs] == [JobType.ROOM]


def test_every_create_dispatch_adds_one_more() -> None:
    e = engine()
    for _ in range(3):
        e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    assert len(e.list_dispatches("r")) == 4


def test_list_and_delete_dispatch() -> None:
    e = engine()
    d = e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    assert e.list_dispatches("r", d.id) == [d]
    assert e.list_dispatches("r", "AD_unknown") == []
    assert e.list_dispatches("missing") == []
    deleted = e.delete_dispatch("r", d.id, 7.0)
    assert deleted.deleted_at == 7.0 and deleted not in e.list_dispatches("r")
    [job] = deleted.jobs
    assert job.status is JobStatus.FAILED and job.error == "terminated: dispatch deleted"
    with pytest.raises(NotFound, match="dispatch ID not found"):
        e.delete_dispatch("r", d.id, 8.0)
    with pytest.raises(NotFound):
        e.delete_dispatch("missing", d.id, 8.0)


def test_deleting_a_dispatch_whose_job_ran_ends_it_as_success() -> None:
    e = engine()
    d = e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    job = d.jobs[0]
    job.offer("AW_1", 1.0)
    job.assign("agent-x", 1.0)
    job.start(2.0)
    e.take_decisions()
    e.delete_dispatch("r", d.id, 3.0)
    assert job.status is JobStatus.SUCCEEDED and job.error == "terminated: dispatch deleted"
    assert e.take_decisions() == [JobEnded(job), DispatchDeleted("r", d.id, (job.id,))]


def test_delete_room_closes_it_and_ends_its_jobs() -> None:
    e = engine()
    d = e.create_dispatch("r", DispatchSpec(agent_name="a"), 0.0)
    room = e.room("r")
    e.participant_joined("r", person("u"), 1.0)
    e.take_decisions()
    e.delete_room("r", 2.0)
    assert e.rooms == {} and all(j.ended for j in d.jobs)
    decisions = e.take_decisions()
    cause = DisconnectCause.ROOM_DELETED
    assert DisconnectParticipant("r", "u", "room closed: deleted by API request", cause, "PA_u") in decisions
    assert decisions[-1] == RoomClosed("r", room.sid, "deleted by API request")
    with pytest.raises(NotFound, match="requested room does not exist"):
        e.delete_room("r", 3.0)


def test_empty_room_closes_after_empty_timeout() -> None:
    e = engine(pending_timeout=1000.0)
    e.create_room(RoomSpec(name="r", empty_timeout=10), now=0.0)
    assert e.next_deadline() == 10.0
    e.tick(9.9)
    assert "r" in e.rooms
    e.tick(10.0)
    assert "r" not in e.rooms
    assert any(isinstance(d, RoomClosed) and d.reason == "empty timeout" for d in e.take_decisions())


def test_departure_timeout_counts_from_the_last_departure_and_agents_do_not_keep_a_room() -> None:
    e = engine(pending_timeout=1000.0)
    e.create_room(RoomSpec(name="r", empty_timeout=10, departure_timeout=5), now=0.0)
    e.participant_joined("r", person("u"), 1.0)
    e.participant_joined("r", person("bot", kind=AGENT), 1.0)
    assert e.room("r").num_participants == 1
    e.tick(100.0)
    assert "r" in e.rooms  # someone is present: no deadline
    e.participant_left("r", "u", 100.0)
    assert e.room("r").close_deadline() == (105.0, "departure timeout")
    e.tick(104.9)
    assert "r" in e.rooms
    e.tick(105.0)
    assert "r" not in e.rooms


def test_max_participants_refuses_the_extra_participant_but_not_agents() -> None:
    e = engine()
    e.create_room(RoomSpec(name="r", max_participants=1), now=0.0)
    e.participant_joined("r", person("a"), 0.0)
    with pytest.raises(ResourceExhausted):
        e.participant_joined("r", person("b"), 0.0)
    e.participant_joined("r", person("bot", kind=AGENT), 0.0)
    assert set(e.room("r").participants) == {"a", "bot"}


def test_same_identity_replaces_the_old_connection() -> None:
    e = engine()
    e.create_room(RoomSpec(name="r"), now=0.0)
    first = person("a")
    e.participant_joined("r", first, 0.0)
    e.take_decisions()
    second = person("a", 1.0)
    e.participant_joined("r", second, 1.0)
    replaced = DisconnectParticipant(
        "r", "a", "replaced by a new connection", DisconnectCause.DUPLICATE_IDENTITY, "PA_a"
    )
    assert e.take_decisions() == [replaced, ParticipantLeft("r", first), ParticipantJoined("r", second)]


def test_remove_participant() -> None:
    e = engine()
    e.create_room(RoomSpec(name="r"), now=0.0)
    e.participant_joined("r", person("a"), 0.0)
    assert e.participant("r", "a").identity == "a"
    e.take_decisions()
    removed = e.remove_participant("r", "a", 2.0)
    cause = DisconnectCause.REMOVED
    assert e.take_decisions() == [
        ParticipantLeft("r", removed),
        DisconnectParticipant("r", "a", "removed by API request", cause, "PA_a"),
    ]
    with pytest.raises(NotFound, match="participant does not exist"):
        e.remove_participant("r", "a", 3.0)
    with pytest.raises(NotFound):
        e.participant("r", "a")


def test_pending_job_fails_with_a_reason_after_the_pending_timeout() -> None:
    e = engine(pending_timeout=60.0)
    d = e.create_dispatch("r", DispatchSpec(agent_name="bot"), 0.0)
    automatic = next(x for x in e.list_dispatches("r") if x.agent_name == "")
    assert e.next_deadline() == 60.0
    e.tick(59.0)
    assert d.jobs[0].status is JobStatus.PENDING
    e.tick(60.0)
    assert d.jobs[0].status is JobStatus.FAILED
    nobody = "(no worker is registered at all)"
    assert d.jobs[0].error == f"no worker registered for agent 'bot' within 60s {nobody}"
    assert automatic.jobs[0].error == f"no worker registered for automatic agents within 60s {nobody}"
    assert e.next_deadline() == 300.0  # only the room's empty timeout is left


def test_list_rooms_filters_by_name_without_duplicates() -> None:
    e = engine()
    for name in ("a", "b", "c"):
        e.create_room(RoomSpec(name=name), now=0.0)
    assert [r.name for r in e.list_rooms()] == ["a", "b", "c"]
    assert [r.name for r in e.list_rooms(["c", "a", "c", "zz"])] == ["c", "a"]


def test_update_room_metadata() -> None:
    e = engine(limits=Limits(max_metadata_size=4))
    e.create_room(RoomSpec(name="r"), now=0.0)
    assert e.update_room_metadata("r", "abcd").metadata == "abcd"
    with pytest.raises(InvalidArgument, match="room metadata size exceeds limits"):
        e.update_room_metadata("r", "abcde")
    with pytest.raises(NotFound):
        e.update_room_metadata("x", "")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RoomSpec(name=""), "room name is required"),
        (RoomSpec(name="x" * 257), "room name length exceeds limits: max length 256"),
        (RoomSpec(name="a\nb"), "room name contains a control character at position 1"),
        (RoomSpec(name=" a"), "must not start or end with whitespace"),
        (RoomSpec(name="r", metadata="x" * (512 * 1024 + 1)), "room metadata size exceeds limits"),
        (RoomSpec(name="r", empty_timeout=-1), "must not be negative"),
        (RoomSpec(name="r", agents=(DispatchSpec(deployment="a_b"),)), "reserved character '_'"),
        (RoomSpec(name="r", agents=(DispatchSpec(deployment="a b"),)), "whitespace or control byte"),
        (RoomSpec(name="r", agents=(DispatchSpec(deployment="d" * 65),)), "deployment exceeds 64 bytes"),
        (RoomSpec(name="r", agents=(DispatchSpec(agent_name="a\tb"),)), "agent name contains a control"),
        (RoomSpec(name="r", agents=(DispatchSpec(agent_name="a" * 129),)), "agent name length exceeds"),
        (
            RoomSpec(name="r", agents=(DispatchSpec(attributes={"k": "v" * 64 * 1024}),)),
            "dispatch attributes size exceeds limits",
        ),
    ],
)
def test_invalid_room_specs_are_refused_and_nothing_is_created(spec: RoomSpec, message: str) -> None:
    e = engine()
    with pytest.raises(InvalidArgument, match=message):
        e.create_room(spec, now=0.0)
    assert e.rooms == {}


def test_invalid_dispatch_does_not_create_the_room() -> None:
    e = engine()
    with pytest.raises(InvalidArgument, match="dispatch metadata size exceeds limits"):
        e.create_dispatch("r", DispatchSpec(metadata="x" * (512 * 1024 + 1)), 0.0)
    assert e.rooms == {}
