"""Translation between core objects and LiveKit's protobuf messages (livekit-protocol), both ways."""

import json
from collections.abc import Callable, Iterable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol import room as room_pb

from switchboard.core.dispatch import Dispatch, DispatchSpec, RestartPolicy
from switchboard.core.engine import RoomSpec
from switchboard.core.errors import InvalidArgument
from switchboard.core.jobs import Attempt, Job, JobStatus
from switchboard.core.rooms import Participant, Room, Track

_JOB_STATUS = {
    JobStatus.PENDING: agent.JS_PENDING,
    JobStatus.OFFERED: agent.JS_PENDING,
    JobStatus.ASSIGNED: agent.JS_PENDING,  # running only once the worker says so
    JobStatus.RUNNING: agent.JS_RUNNING,
    JobStatus.SUCCEEDED: agent.JS_SUCCESS,
    JobStatus.FAILED: agent.JS_FAILED,
}

_PARTICIPANT_KIND = {name.lower(): value for name, value in models.ParticipantInfo.Kind.items()}
_TRACK_SOURCES = frozenset(models.TrackSource.keys())


def _ns(seconds: float | None) -> int:
    return 0 if seconds is None else int(seconds * 1e9)


def room_to_proto(room: Room) -> models.Room:
    return models.Room(
        sid=room.sid,
        name=room.name,
        empty_timeout=room.empty_timeout,
        departure_timeout=room.departure_timeout,
        max_participants=room.max_participants,
        creation_time=int(room.created_at),
        creation_time_ms=int(room.created_at * 1000),
        metadata=room.metadata,
        num_participants=room.num_participants,
    )


def track_to_proto(track: Track) -> models.TrackInfo:
    return models.TrackInfo(
        sid=track.sid,
        type="AUDIO" if track.kind == "audio" else "VIDEO",
        name=track.name,
        muted=track.muted,
        source=track.source.upper() if track.source.upper() in _TRACK_SOURCES else "UNKNOWN",
        mime_type=track.mime_type,
        mid=track.mid,
        encryption=track.encryption,  # type: ignore[arg-type]
    )


def participant_to_proto(
    participant: Participant,
    state: str = "",
    permission: models.ParticipantPermission | None = None,
    client_protocol: int = 0,
) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=participant.sid,
        identity=participant.identity,
        name=participant.name,
        state=state or ("ACTIVE" if participant.active else "JOINED"),
        tracks=[track_to_proto(t) for t in participant.tracks.values()],
        metadata=participant.metadata,
        attributes=participant.attributes,
        joined_at=int(participant.joined_at),
        joined_at_ms=int(participant.joined_at * 1000),
        version=participant.version,
        permission=permission,
        is_publisher=bool(participant.tracks),
        kind=models.ParticipantInfo.Kind.Name(
            _PARTICIPANT_KIND.get(participant.kind, models.ParticipantInfo.STANDARD)
        ),
        client_protocol=client_protocol,
        kind_details=[models.ParticipantInfo.FORWARDED] if participant.forwarded else [],
    )


def job_to_proto(
    job: Job,
    spec: DispatchSpec,
    room: models.Room | None = None,
    participant: models.ParticipantInfo | None = None,
) -> agent.Job:
    """A job as workers and ListDispatch see it; `room` and `participant` are snapshots taken now."""
    return agent.Job(
        id=job.id,
        dispatch_id=job.dispatch_id,
        type=agent.JobType.Name(job.type),
        room=room or models.Room(name=job.room),
        participant=participant,
        agent_name=job.agent_name,
        metadata=spec.metadata,
        deployment=spec.deployment,
        attributes=spec.attributes,
        state=agent.JobState(
            status=_JOB_STATUS[job.status],
            error=job.error,
            started_at=_ns(job.started_at),
            ended_at=_ns(job.ended_at),
            updated_at=_ns(job.updated_at),
            participant_identity=job.agent_identity,
            worker_id=job.worker_id,
            # Waiting to be run again after an earlier attempt ended (that attempt says why).
            reason=agent.JSR_RETRYING if job.attempts and not job.ended and not job.started_at else None,
        ),
    )


def job_end_reason(job: Job) -> agent.JobStateReason:
    """The class of an ended job's reason, as LiveKit's JobStateReason names it (unspecified for the rest:
    the worker's own report, a failure after restarts, a server shutdown)."""
    if job.error.startswith("terminated: dispatch deleted"):
        return agent.JSR_DISPATCH_DELETED
    if job.error.startswith("terminated: room closed"):
        return agent.JSR_ROOM_CLOSED
    if job.error.startswith(("no worker ", "not offered within ")):
        return agent.JSR_NO_CAPACITY
    return agent.JSR_UNSPECIFIED


def attempt_to_proto(
    job: Job, attempt: Attempt, spec: DispatchSpec, room: models.Room | None = None
) -> agent.Job:
    """An earlier attempt of a job, as an ended entry with the job's id: where it ran and why it ended."""
    message = job_to_proto(job, spec, room)
    message.state.CopyFrom(
        agent.JobState(
            status=agent.JS_FAILED,
            error=attempt.error,
            started_at=_ns(attempt.started_at),
            ended_at=_ns(attempt.ended_at),
            updated_at=_ns(attempt.ended_at),
            participant_identity=attempt.agent_identity,
            worker_id=attempt.worker_id,
            reason=agent.JSR_RETRYING,
        )
    )
    return message


def dispatch_to_proto(dispatch: Dispatch, room: models.Room | None = None) -> agent_dispatch.AgentDispatch:
    """The dispatch with its jobs; a job run more than once is listed once per attempt, the earlier ones
    (ended, with their worker and reason) first and the current one last, all with the job's id."""
    spec = dispatch.spec
    return agent_dispatch.AgentDispatch(
        id=dispatch.id,
        agent_name=spec.agent_name,
        room=dispatch.room,
        metadata=spec.metadata,
        restart_policy=agent_dispatch.JobRestartPolicy.Name(spec.restart_policy),
        deployment=spec.deployment,
        attributes=spec.attributes,
        state=agent_dispatch.AgentDispatchState(
            created_at=_ns(dispatch.created_at),
            deleted_at=_ns(dispatch.deleted_at),
            jobs=[
                entry
                for job in dispatch.jobs
                for entry in (
                    *(attempt_to_proto(job, attempt, spec, room) for attempt in job.attempts),
                    job_to_proto(job, spec, room),
                )
            ],
        ),
    )


def _restart_policy(value: int) -> RestartPolicy:
    try:
        return RestartPolicy(value)
    except ValueError:
        raise InvalidArgument(f"unknown restart_policy {value}") from None


def dispatch_spec(
    message: agent_dispatch.CreateAgentDispatchRequest | agent_dispatch.RoomAgentDispatch,
) -> DispatchSpec:
    return DispatchSpec(
        agent_name=message.agent_name,
        metadata=message.metadata,
        restart_policy=_restart_policy(message.restart_policy),
        deployment=message.deployment,
        attributes=dict(message.attributes),
    )


def room_spec_from_token(name: str, config: room_pb.RoomConfiguration | None) -> RoomSpec:
    """The room a joining participant's token asks for (its `roomConfig`); "" and 0 mean unset."""
    if config is None:
        return RoomSpec(name=name)
    return RoomSpec(
        name=name,
        empty_timeout=config.empty_timeout,
        departure_timeout=config.departure_timeout,
        max_participants=config.max_participants,
        metadata=config.metadata,
        agents=tuple(dispatch_spec(a) for a in config.agents) or None,
    )


def room_spec(request: room_pb.CreateRoomRequest) -> RoomSpec:
    return RoomSpec(
        name=request.name,
        empty_timeout=request.empty_timeout,
        departure_timeout=request.departure_timeout,
        max_participants=request.max_participants,
        metadata=request.metadata,
        # An empty list means "none given" (LiveKit decodes [] as nil): the implicit automatic dispatch.
        agents=tuple(dispatch_spec(a) for a in request.agents) or None,
    )


def to_json(message: Message) -> dict[str, Any]:
    """Proto3 JSON as LiveKit writes it: snake_case, defaults emitted, enums by name, int64 as strings."""
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def from_json(body: bytes, message: Message) -> None:
    """Read proto3 JSON into `message` tolerantly (snake_case or camelCase, unknown fields ignored), but
    refuse an enum value the field does not define, by name as by number (InvalidArgument).

    protobuf's parser drops an unknown enum *name* silently when it ignores unknown fields (as Go's
    protojson does), so `"restart_policy": "BOGUS"` would become the default while `99` is refused.
    """
    try:
        data = json.loads(body)
    except ValueError as exc:  # also invalid UTF-8
        raise json_format.ParseError(f"Failed to load JSON: {exc}") from exc
    _check_enum_names(data, cast(Descriptor, message.DESCRIPTOR), "")
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    check_enums(message)


def check_enums(message: Message, path: str = "") -> None:
    """Refuse enum numbers the field's enum does not define, in `message` and the messages it holds."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        value_field, items = _values(field, value, map_items=lambda v: v.values())
        enum, nested = _enum(value_field), _message(value_field)
        for item in items:
            if enum is not None and item not in enum.values_by_number:
                raise _unknown(where, enum, item)
            if nested is not None:
                check_enums(item, where + ".")


def _check_enum_names(data: Any, descriptor: Descriptor, path: str) -> None:
    if not isinstance(data, dict) or descriptor.full_name.startswith("google.protobuf."):
        return  # not an object (ParseDict says what is wrong), or a well-known type with its own JSON form
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
        if field is None or value is None:
            continue
        where = f"{path}{field.name}"
        value_field, items = _values(
            field, value, map_items=lambda v: v.values() if isinstance(v, dict) else (), decoded_json=True
        )
        enum, nested = _enum(value_field), _message(value_field)
        for item in items:
            # A number, even written as a string ("1"), is checked by check_enums once parsed.
            if (
                enum is not None
                and isinstance(item, str)
                and item not in enum.values_by_name
                and not item.lstrip("-").isdigit()
            ):
                raise _unknown(where, enum, item)
            if nested is not None:
                _check_enum_names(item, nested, where + ".")


def _values(
    field: FieldDescriptor, value: Any, map_items: Callable[[Any], Iterable[Any]], decoded_json: bool = False
) -> tuple[FieldDescriptor, Iterable[Any]]:
    """The field that describes each item of `value` (a map's value field for a map), and the items."""
    entry = _message(field)
    if entry is not None and entry.GetOptions().map_entry:
        return entry.fields_by_name["value"], map_items(value)
    if field.is_repeated and (not decoded_json or isinstance(value, list)):
        return field, value
    return field, [value]


def _enum(field: FieldDescriptor) -> EnumDescriptor | None:
    return field.enum_type if field.type == FieldDescriptor.TYPE_ENUM else None


def _message(field: FieldDescriptor) -> Descriptor | None:
    return field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None


def _unknown(where: str, enum: EnumDescriptor, value: object) -> InvalidArgument:
    names = ", ".join(enum.values_by_name)
    return InvalidArgument(f"unknown {where} {value!r}: expected one of {names}")
