"""Translation between core objects and LiveKit's protobuf messages (livekit-protocol), both ways."""

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
        width=track.width,
        height=track.height,
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
