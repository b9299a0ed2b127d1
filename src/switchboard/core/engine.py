"""The engine: rooms, dispatches, jobs and workers, and the rules that tie them together.

Every method takes the current time; nothing here reads a clock, sleeps or does I/O. Side effects the
outside world must carry out are queued as decisions and taken with `take_decisions()`.

A job is never dropped. It waits (pending) until a suitable worker can take it, is offered to one worker
at a time, and ends only with a status and a reason: taken and finished, failed (by the worker, or its
worker was lost and the restart policy says not to retry), terminated, or nobody took it in time.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from switchboard.core import ids
from switchboard.core.dispatch import Dispatch, DispatchSpec, RestartPolicy
from switchboard.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from switchboard.core.events import (
    AgentParticipant,
    AssignJob,
    Decision,
    DisconnectCause,
    DisconnectParticipant,
    DispatchCreated,
    DispatchDeleted,
    DispatchReferenced,
    JobChanged,
    JobContext,
    JobEnded,
    JobQueued,
    JobStarted,
    OfferJob,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomClosed,
    RoomStarted,
    SendData,
    TerminateJob,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    WorkerDrained,
)
from switchboard.core.explain import Explanation, WorkerVerdict, registered_keys, who, worker_verdict
from switchboard.core.history import ClosedRoom, RoomHistory
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.limits import Limits, check_attributes, check_deployment, check_metadata, check_name
from switchboard.core.rooms import Participant, Room, Track
from switchboard.core.selection import choose_worker
from switchboard.core.workers import (
    AvailabilityAnswer,
    JobUpdate,
    Worker,
    WorkerKey,
    WorkerSpec,
    WorkerStatus,
)


@dataclass(frozen=True)
class EngineSettings:
    limits: Limits = field(default_factory=Limits)
    empty_timeout: int = 300
    departure_timeout: int = 20
    max_participants: int = 0
    pending_timeout: float = 60.0
    """How long a job may wait for a worker before it fails with a reason."""
    availability_timeout: float = 5.0
    """How long a worker has to answer an offer before the job goes to the next worker."""
    start_timeout: float = 30.0
    """How long an assigned job may take to be reported running before it counts as failed."""
    reconnect_grace: float = 5.0
    """How long a lost worker's jobs wait for it to reconnect and claim them (migrate_job)."""
    max_job_restarts: int = 3
    restart_backoff: float = 1.0
    """A restarted job waits this long before it is offered again, doubled for each further restart."""
    restart_backoff_max: float = 30.0
    load_threshold: float = 1.0
    """Workers that reported a load at or above this get no offers."""
    history_ttl: float = 600.0
    """How long a closed room's dispatches and jobs stay readable (ListDispatch); 0 keeps none."""
    history_max_rooms: int = 1000
    """At most this many closed rooms are kept; the oldest closure is forgotten first."""
    singleton_agents: frozenset[str] = frozenset()
    """Agent names of which a room gets at most one live dispatch: asking again adds a reference to it."""


@dataclass(frozen=True)
class RoomSpec:
    """The fields of CreateRoomRequest (or a token's roomConfig) that shape a new room; 0/None = default."""

    name: str
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    agents: tuple[DispatchSpec, ...] | None = None


UNATTENDED_AT_SHUTDOWN = "terminated: server shutting down, and no participant is left in the room"


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.rooms: dict[str, Room] = {}
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, Job] = {}
        """Jobs that have not ended, by id."""
        self.draining = False
        self.singleton_agents = set(self.settings.singleton_agents)
        """Also the agents the server runs whose config says `singleton: true`, added once they are read."""
        self.history = RoomHistory(self.settings.history_ttl, self.settings.history_max_rooms)
        """Closed rooms' dispatches, for a while."""
        self._workers_by_key: dict[WorkerKey, dict[str, Worker]] = {}
        self._pending: dict[WorkerKey, dict[str, Job]] = {}
        self._decisions: list[Decision] = []

    def take_decisions(self) -> list[Decision]:
        decisions, self._decisions = self._decisions, []
        return decisions

    # Rooms

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise NotFound("requested room does not exist")
        return room

    def list_rooms(self, names: Iterable[str] = ()) -> list[Room]:
        wanted = list(names)
        if not wanted:
            return list(self.rooms.values())
        return [self.rooms[name] for name in dict.fromkeys(wanted) if name in self.rooms]

    def create_room(self, spec: RoomSpec, now: float) -> Room:
        """Create the room, or return the live one unchanged (LiveKit does the same)."""
        limits = self.settings.limits
        check_name("room name", spec.name, limits.max_room_name_length)
        check_metadata("room metadata", spec.metadata, limits)
        if min(spec.empty_timeout, spec.departure_timeout, spec.max_participants) < 0:
            raise InvalidArgument("room timeouts and max_participants must not be negative")
        for agent in spec.agents or ():
            agent.validate(limits)
        existing = self.rooms.get(spec.name)
        if existing is not None:
            return existing
        self._refuse_new_work()
        room = Room(
            name=spec.name,
            sid=ids.new_id(ids.ROOM),
            created_at=now,
            empty_timeout=spec.empty_timeout or self.settings.empty_timeout,
            departure_timeout=spec.departure_timeout or self.settings.departure_timeout,
            max_participants=spec.max_participants or self.settings.max_participants,
            metadata=spec.metadata,
        )
        self.rooms[room.name] = room
        self._decisions.append(_room_started(room))
        # A room with no explicit agents gets the implicit automatic dispatch (empty agent name).
        for agent in spec.agents or (DispatchSpec(),):
            self._add_dispatch(room, agent, now)
        return room

    def delete_room(self, name: str, now: float) -> Room:
        room = self.room(name)
        self._close_room(room, "deleted by API request", now, deleted=True)
        return room

    def update_room_metadata(self, name: str, metadata: str) -> Room:
        room = self.room(name)
        check_metadata("room metadata", metadata, self.settings.limits)
        room.metadata = metadata
        return room

    def _close_room(
        self, room: Room, reason: str, now: float, *, deleted: bool = False, handed_over: bool = False
    ) -> None:
        cause = DisconnectCause.ROOM_DELETED if deleted else DisconnectCause.ROOM_CLOSED
        for participant in room.participants.values():
            self._decisions.append(
                DisconnectParticipant(
                    room.name, participant.identity, f"room closed: {reason}", cause, participant.sid
                )
            )
            self._decisions.append(ParticipantLeft(room.name, participant))
        room.participants.clear()
        ended = f"terminated: room closed ({reason})"
        for dispatch in room.dispatches.values():
            self._terminate_dispatch_jobs(dispatch, ended, now, handed_over=handed_over)
            dispatch.deleted_at = now
        del self.rooms[room.name]
        self.history.add(ClosedRoom(room, now, reason))
        self._decisions.append(RoomClosed(room.name, room.sid, reason, handed_over=handed_over))

    def _refuse_new_work(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down and accepts no new rooms or dispatches")

    # Participants

    def join(self, spec: RoomSpec, participant: Participant, now: float) -> Room:
        """A participant connects to `spec.name`, creating the room from its token's room configuration.

        Unlike LiveKit, the token's agents are honoured when the room already exists: each agent the room
        has no dispatch for yet is dispatched (so a reconnect with the same token adds nothing).
        """
        self._check_participant(participant)
        self.check_agent_job(spec.name, participant.job)
        room = self.rooms.get(spec.name)
        if room is None:
            room = self.create_room(spec, now)
        else:
            for agent in spec.agents or ():
                agent.validate(self.settings.limits)
            present = {d.agent_name for d in room.dispatches.values()}
            for agent in spec.agents or ():
                if agent.agent_name not in present:
                    present.add(agent.agent_name)
                    self._add_dispatch(room, agent, now)
        self.participant_joined(room.name, participant, now)
        return room

    def _check_participant(self, participant: Participant) -> None:
        limits = self.settings.limits
        check_name("participant identity", participant.identity, limits.max_participant_identity_length)
        check_metadata("participant metadata", participant.metadata, limits)
        check_attributes("participant attributes", participant.attributes, limits)

    def check_agent_job(self, room_name: str, job_claim: tuple[str, int] | None) -> None:
        """Refuse an agent whose token names a job this server does not run in that room, or an attempt
        of it that a later one replaced: a stale copy must not join, nor create a room."""
        if job_claim is None:
            return
        job_id, attempt = job_claim
        job = self.jobs.get(job_id)
        if job is None or job.room != room_name:
            raise FailedPrecondition(f"agent job {job_id} has ended or is not known to this server")
        if attempt != job.attempt and not (attempt == job.attempt - 1 and self._rejoin_revives(job)):
            raise FailedPrecondition(
                f"agent job {job_id}: attempt {attempt} was replaced by attempt {job.attempt}"
            )

    def _rejoin_revives(self, job: Job) -> bool:
        """An agent of the previous attempt joins again (e.g. a full reconnect) before any new copy was
        assigned, and its worker is still here: the job is taken back, not run twice."""
        return job.revivable and job.attempts[-1].worker_id in self.workers

    def participant_joined(self, room_name: str, participant: Participant, now: float) -> None:
        room = self.room(room_name)
        self._check_participant(participant)
        self.check_agent_job(room_name, participant.job)
        replaced = room.participants.pop(participant.identity, None)
        if replaced is not None:
            self._decisions.append(
                DisconnectParticipant(
                    room.name,
                    replaced.identity,
                    "replaced by a new connection",
                    DisconnectCause.DUPLICATE_IDENTITY,
                    replaced.sid,
                )
            )
            self._decisions.append(ParticipantLeft(room.name, replaced))
        elif (
            not participant.dependent
            and room.max_participants
            and room.num_participants >= room.max_participants
        ):
            raise ResourceExhausted("room is full")
        room.participants[participant.identity] = participant
        self._decisions.append(ParticipantJoined(room.name, participant))
        if participant.job is not None:
            self._agent_joined(self.jobs[participant.job[0]], participant.job[1], now)
        if not participant.dependent:
            for dispatch in room.dispatches.values():
                self._launch(dispatch, JobType.PARTICIPANT, now, participant.identity)

    def _agent_joined(self, job: Job, attempt: int, now: float) -> None:
        """The job's agent is in the room: the job runs, whether or not its framework says so (the Node
        framework never does)."""
        if attempt != job.attempt:  # the previous attempt's agent, allowed in by check_agent_job
            worker = self.workers[job.attempts[-1].worker_id]
            self._revive(job, worker, now)
        elif job.status is JobStatus.ASSIGNED:
            job.start(now)
            self._decisions.append(JobStarted(job))

    def update_participant(
        self,
        room_name: str,
        identity: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Participant:
        """Change what others see of a participant; an empty attribute value deletes the attribute."""
        participant = self.participant(room_name, identity)
        limits = self.settings.limits
        merged = dict(participant.attributes)
        for key, value in (attributes or {}).items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        if metadata is not None:
            check_metadata("participant metadata", metadata, limits)
        check_attributes("participant attributes", merged, limits)
        if name is not None:
            participant.name = name
        if metadata is not None:
            participant.metadata = metadata
        participant.attributes = merged
        participant.changed()
        self._decisions.append(ParticipantUpdated(room_name, identity))
        return participant

    def track_published(self, room_name: str, identity: str, track: Track, now: float) -> None:
        """A participant published a track; its first one launches the dispatches' publisher jobs."""
        participant = self.participant(room_name, identity)
        participant.tracks[track.sid] = track
        participant.changed()
        self._decisions.append(TrackPublished(room_name, participant, track))
        if participant.has_published or participant.dependent:
            return
        participant.has_published = True
        for dispatch in self.room(room_name).dispatches.values():
            self._launch(dispatch, JobType.PUBLISHER, now, identity)

    def track_unpublished(self, room_name: str, identity: str, track_sid: str) -> Track:
        participant = self.participant(room_name, identity)
        track = participant.tracks.pop(track_sid, None)
        if track is None:
            raise NotFound("track does not exist")
        participant.changed()
        self._decisions.append(ParticipantUpdated(room_name, identity))
        self._decisions.append(TrackUnpublished(room_name, participant, track))
        return track

    def mute_track(
        self, room_name: str, identity: str, track_sid: str, muted: bool, *, by_server: bool = False
    ) -> Track:
        """The publisher muted or unmuted its track, or (`by_server`) the server's API did it for it."""
        participant = self.participant(room_name, identity)
        track = participant.tracks.get(track_sid)
        if track is None:
            raise NotFound("track does not exist")
        track.muted = muted
        participant.changed()
        self._decisions.append(TrackMuted(room_name, identity, track_sid, muted, by_server=by_server))
        return track

    def send_data(self, room_name: str, packet: bytes, reliable: bool, destinations: Iterable[str]) -> None:
        """Data from the server to the room's participants (all, or only `destinations`)."""
        self.room(room_name)
        self._decisions.append(SendData(room_name, packet, reliable, frozenset(destinations)))

    def participant_left(
        self, room_name: str, identity: str, now: float, sid: str = "", *, lost: bool = False
    ) -> Participant:
        """The participant is gone (`sid`, when given, must match: a newer connection is left alone);
        `lost` when its connection dropped instead of leaving."""
        room = self.room(room_name)
        participant = room.participants.get(identity)
        if participant is None or (sid and participant.sid != sid):
            raise NotFound("participant does not exist")
        del room.participants[identity]
        room.last_departure_at = now
        self._decisions.append(ParticipantLeft(room.name, participant))
        if participant.job is not None:
            self._agent_left(participant, lost, now)
        return participant

    def _agent_left(self, participant: Participant, lost: bool, now: float) -> None:
        """A job's agent left the room. A framework that reports on its jobs says itself how the job
        ended; for one that never does, leaving is the end: success when it left, a failure (restart
        policy) when its connection was lost."""
        assert participant.job is not None
        job_id, attempt = participant.job
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.reported or job.orphaned_at is not None:
            return
        if job.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            return
        who = f"agent participant '{participant.identity}'"
        if lost:
            self._failed(job, f"{who} lost its connection", now, copy_may_live=True)
        else:
            self._end_job(job, True, f"{who} left the room", now)

    def remove_participant(self, room_name: str, identity: str, now: float) -> Participant:
        participant = self.participant_left(room_name, identity, now)
        self._decisions.append(
            DisconnectParticipant(
                room_name, identity, "removed by API request", DisconnectCause.REMOVED, participant.sid
            )
        )
        return participant

    def participant(self, room_name: str, identity: str) -> Participant:
        participant = self.room(room_name).participants.get(identity)
        if participant is None:
            raise NotFound("participant does not exist")
        return participant

    # Dispatches

    def create_dispatch(self, room_name: str, spec: DispatchSpec, now: float) -> Dispatch:
        """Add a dispatch, creating the room with defaults if it does not exist (as LiveKit's auto_create)."""
        spec.validate(self.settings.limits)
        self._refuse_new_work()
        room = self.rooms.get(room_name)
        if room is None:
            room = self.create_room(RoomSpec(name=room_name), now)
        return self._add_dispatch(room, spec, now)

    def delete_dispatch(self, room_name: str, dispatch_id: str, now: float) -> Dispatch:
        """Delete the dispatch, ending its jobs; a singleton's shared dispatch loses one reference, and
        goes only with the last one."""
        room = self.rooms.get(room_name)
        dispatch = room.dispatches.get(dispatch_id) if room else None
        if room is None or dispatch is None:
            raise NotFound("dispatch ID not found")
        if dispatch.references > 1:
            dispatch.references -= 1
            self._decisions.append(DispatchReferenced(room.name, dispatch.id, dispatch.references))
            return dispatch
        del room.dispatches[dispatch_id]
        dispatch.deleted_at = now
        self._terminate_dispatch_jobs(dispatch, "terminated: dispatch deleted", now)
        self._decisions.append(DispatchDeleted(room.name, dispatch.id, tuple(j.id for j in dispatch.jobs)))
        return dispatch

    def list_dispatches(
        self, room_name: str, dispatch_id: str = "", now: float | None = None
    ) -> list[Dispatch]:
        """The room's dispatches; given `now`, a closed room's too, as they ended, while they are kept."""
        room = self.rooms.get(room_name) if now is None else self.find_room(room_name, now)
        if room is None:
            return []
        if dispatch_id:
            found = room.dispatches.get(dispatch_id)
            return [found] if found else []
        return list(room.dispatches.values())

    def find_room(self, name: str, now: float) -> Room | None:
        """The live room, else the closed one whose history is still kept (its dispatches as they ended)."""
        room = self.rooms.get(name)
        if room is None and (closed := self.history.get(name, now)) is not None:
            room = closed.room
        return room

    def restore_room(
        self, room: Room, dispatches: Iterable[Dispatch], lost: str, now: float, lost_node: str = ""
    ) -> Room:
        """Bring back a room that lived on a node that was lost (killed, or restarted), with its dispatches
        and their ids, as the store kept them; the live room if there is one already.

        Ended jobs stay as they ended. Each job that was assigned or running lost its attempt (`lost` says
        why): it runs again if its restart policy allows, else it ends with that reason; its copy, if it
        still runs somewhere, is stopped if its worker is connected (its agent joined the lost node), and
        taken back if its worker reconnects with it (as after a worker's disconnection); the workers of
        `lost_node` (the room's node, on a cluster) are gone with it, even if this node has not found it
        lost yet. A job that was waiting waits again, with a fresh deadline. The participants were cut off
        with their node: they have the departure timeout to come back before the room closes.
        """
        existing = self.rooms.get(room.name)
        if existing is not None:
            return existing
        self._refuse_new_work()
        room.participants.clear()
        room.last_departure_at = now
        self.rooms[room.name] = room
        self._decisions.append(_room_started(room, restored=True))
        for dispatch in dispatches:
            room.dispatches[dispatch.id] = dispatch
            for job in dispatch.jobs:
                if not job.ended:
                    self._resume_lost(job, lost, now, lost_node)
        return room

    def _resume_lost(self, job: Job, lost: str, now: float, lost_node: str) -> None:
        self.jobs[job.id] = job
        job.orphaned_at = None
        if job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            worker = self.workers.get(job.worker_id)
            if worker is not None and lost_node and worker.spec.node == lost_node:
                worker = None
            if worker is not None:
                # Its worker is still connected (to a live node), but the copy's agent joined the lost
                # node, and rejoins there only: stop it. The worker is offered the job again only once it
                # reports that copy's end (or `start_timeout` later) if it reports on its jobs, or may
                # still launch the copy (assigned: livekit-agents ignores a termination until then).
                # The Node framework reports nothing: waiting for it would only delay the job.
                self._decisions.append(TerminateJob(worker.id, job.id, lost))
                if job.reported or job.status is JobStatus.ASSIGNED:
                    job.await_copy_end(worker.id, now + self.settings.start_timeout)
            # A worker that was not connected may come back with the copy (migrate_job): it is taken back.
            self._failed(job, lost, now, copy_may_live=worker is None)
            return
        # Waiting (or offered, and the answer lost with the node): in line again, as if just launched.
        job.status, job.worker_id, job.retry_at, job.pending_since = JobStatus.PENDING, "", None, now
        self._decisions.append(JobQueued(job))
        self._queue(job, now)

    def _add_dispatch(self, room: Room, spec: DispatchSpec, now: float) -> Dispatch:
        """Add the dispatch and launch its jobs; for a singleton agent that the room already has a live
        dispatch of, count one more reference to that one instead."""
        if spec.agent_name in self.singleton_agents:
            for existing in room.dispatches.values():
                if existing.agent_name == spec.agent_name and existing.live:
                    existing.references += 1
                    self._decisions.append(DispatchReferenced(room.name, existing.id, existing.references))
                    return existing
        dispatch = Dispatch(id=ids.new_id(ids.DISPATCH), room=room.name, spec=spec, created_at=now)
        room.dispatches[dispatch.id] = dispatch
        self._decisions.append(
            DispatchCreated(room.name, dispatch.id, spec.agent_name, spec=spec, created_at=now)
        )
        self._launch(dispatch, JobType.ROOM, now)
        for participant in room.participants.values():
            if not participant.dependent:
                self._launch(dispatch, JobType.PARTICIPANT, now, participant.identity)
                if participant.has_published:
                    self._launch(dispatch, JobType.PUBLISHER, now, participant.identity)
        return dispatch

    def _job_context(self, job: Job) -> JobContext:
        """What the worker is told with the job; only a live job of a live room is offered or assigned."""
        room = self.rooms[job.room]
        target = room.participants.get(job.target_identity) if job.target_identity else None
        return JobContext(room, room.dispatches[job.dispatch_id].spec, target)

    def _dispatch_of(self, job: Job) -> Dispatch | None:
        room = self.rooms.get(job.room)
        return room.dispatches.get(job.dispatch_id) if room else None

    # Jobs

    def _launch(self, dispatch: Dispatch, job_type: JobType, now: float, target: str = "") -> None:
        """Start a job of this type for the dispatch, if any worker could ever serve it.

        A room job is launched unless the agent's workers are all of other types, so that it waits for
        the agent's first worker. Participant and publisher jobs are launched only when workers of that
        type are registered: most agents are room agents, and their rooms must not fill with jobs that
        nobody will ever take.
        """
        spec = dispatch.spec
        typed = bool(self._workers_by_key.get((spec.agent_name, job_type, spec.deployment)))
        if job_type is JobType.ROOM:
            others = any(
                self._workers_by_key.get((spec.agent_name, other, spec.deployment))
                for other in (JobType.PUBLISHER, JobType.PARTICIPANT)
            )
            if not typed and others:
                return
        elif not typed:
            return
        job = Job(
            id=ids.new_id(ids.JOB),
            dispatch_id=dispatch.id,
            room=dispatch.room,
            type=job_type,
            agent_name=spec.agent_name,
            deployment=spec.deployment,
            created_at=now,
            target_identity=target,
        )
        dispatch.jobs.append(job)
        self.jobs[job.id] = job
        self._decisions.append(JobQueued(job))
        self._queue(job, now)

    def _key(self, job: Job) -> WorkerKey:
        return (job.agent_name, job.type, job.deployment)

    def _queue(self, job: Job, now: float) -> None:
        """Put a pending job in line and offer it at once if a worker can take it."""
        self._pending.setdefault(self._key(job), {})[job.id] = job
        self._offer_if_possible(job, now)

    def _offer_if_possible(self, job: Job, now: float) -> None:
        if self.draining or job.retry_at is not None:
            return
        workers = self._workers_by_key.get(self._key(job), {})
        worker = choose_worker(job, list(workers.values()), self.settings.load_threshold)
        if worker is None:
            return
        self._pending[self._key(job)].pop(job.id, None)
        job.offer(worker.id, now)
        worker.jobs.add(job.id)
        worker.offered_job = job.id
        self._decisions.append(
            OfferJob(worker.id, job, resuming=job.restarts > 0, context=self._job_context(job))
        )

    def _match(self, key: WorkerKey, now: float) -> None:
        """Offer the pending jobs of one key, oldest first, to the workers that can take them."""
        for job in list(self._pending.get(key, {}).values()):
            self._offer_if_possible(job, now)

    def _release(self, job: Job, now: float, *, rematch: bool = True) -> None:
        """The job leaves its worker; a worker freed from a question gets the next pending job."""
        worker = self.workers.get(job.worker_id)
        if worker is not None:
            worker.jobs.discard(job.id)
            if worker.offered_job == job.id:
                worker.offered_job = ""
                if rematch:
                    self._match(worker.key, now)

    def _end_job(
        self, job: Job, succeeded: bool, reason: str, now: float, *, handed_over: bool = False
    ) -> None:
        self._stop_earlier_copy(job)
        self._release(job, now)
        self._pending.get(self._key(job), {}).pop(job.id, None)
        self.jobs.pop(job.id, None)
        # Its worker, if connected, stops the current attempt's agent itself (it reported the end, or is
        # told to stop); any other agent of the job, nobody would stop: it is removed.
        told = job.worker_id in self.workers and job.orphaned_at is None
        job.end(succeeded, reason, now)
        self._disconnect_agents(job, lambda attempt: not (told and attempt == job.attempt))
        self._decisions.append(JobEnded(job, handed_over=handed_over))

    def _stop_earlier_copy(self, job: Job) -> None:
        """A copy of the previous attempt may still run (or start late): now that the job has another
        copy, or has ended, tell that copy's worker to stop it."""
        if not job.attempts or not job.attempts[-1].copy_may_live:
            return
        previous = job.attempts[-1]
        if previous.worker_id in self.workers and previous.worker_id != job.worker_id:
            self._decisions.append(
                TerminateJob(previous.worker_id, job.id, f"attempt {previous.number} was replaced")
            )
        job.earlier_copy_gone()

    def _disconnect_agents(self, job: Job, stale: Callable[[int], bool]) -> None:
        """Remove from the room the job's agents whose attempt is `stale`: no copy outlives its job."""
        room = self.rooms.get(job.room)
        for participant in list(room.participants.values()) if room else ():
            if participant.job is not None and participant.job[0] == job.id and stale(participant.job[1]):
                self._decisions.append(
                    DisconnectParticipant(
                        room.name if room else job.room,
                        participant.identity,
                        f"job {job.id} ended" if job.ended else f"job {job.id} was restarted",
                        DisconnectCause.JOB_ENDED,
                        participant.sid,
                    )
                )

    def _terminate(self, job: Job, reason: str, now: float, *, handed_over: bool = False) -> None:
        """End a job on the server's initiative, telling its worker (and any earlier copy's) to stop it.
        `handed_over`: only here, its room handed over to another node (see JobEnded)."""
        if job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING) and job.worker_id in self.workers:
            self._decisions.append(TerminateJob(job.worker_id, job.id, reason))
        # A job that ran and was stopped on request succeeded; one that never started failed.
        self._end_job(job, job.started_at is not None, reason, now, handed_over=handed_over)

    def _terminate_dispatch_jobs(
        self, dispatch: Dispatch, reason: str, now: float, *, handed_over: bool = False
    ) -> None:
        for job in dispatch.jobs:
            if not job.ended:
                self._terminate(job, reason, now, handed_over=handed_over)

    def _failed(
        self, job: Job, reason: str, now: float, *, copy_may_live: bool = False, backoff: bool = True
    ) -> None:
        """The attempt failed: run the job again, after a back-off, if its restart policy allows; else end
        it with the reason. `copy_may_live`: the attempt's copy may still run and may be taken back.
        `backoff` False: the failure says nothing about the job (its worker's node died), run it at once."""
        s = self.settings
        dispatch = self._dispatch_of(job)
        retry = dispatch is not None and dispatch.spec.restart_policy is RestartPolicy.ON_FAILURE
        if retry and job.restarts < s.max_job_restarts and not self.draining:
            self._release(job, now)
            self._stop_earlier_copy(job)  # only one earlier copy is ever kept track of
            delay = min(s.restart_backoff * 2**job.restarts, s.restart_backoff_max) if backoff else 0
            job.requeue(reason, now, now + delay if delay > 0 else None, copy_may_live=copy_may_live)
            self._decisions.append(JobQueued(job))
            self._queue(job, now)
            return
        if retry and job.restarts:
            reason += f" (failed {job.attempt} times, gave up after {job.restarts} restarts)"
        if copy_may_live and job.worker_id in self.workers:
            self._decisions.append(TerminateJob(job.worker_id, job.id, reason))
        self._end_job(job, False, reason, now)

    def _withdraw(self, job: Job, now: float, *, rematch: bool = True) -> None:
        """Take the open offer back before its worker answered: the job is in line again, and may go to
        the next worker (`rematch`: the worker freed is asked about the next pending job)."""
        self._release(job, now, rematch=rematch)
        job.withdraw(now)
        self._queue(job, now)

    def _back_to_pending(self, job: Job, now: float, *, answered: bool = True) -> None:
        """The offered worker said no or did not answer: the next worker may take it; that one is asked
        again after its next status report (its capacity may have changed)."""
        self._release(job, now)
        job.reject(now, answered=answered)
        self._queue(job, now)

    # Workers

    def register_worker(self, spec: WorkerSpec, now: float, worker_id: str = "") -> Worker:
        """A worker registers; `worker_id` is given for one of another node (its id there), known by now."""
        check_name("agent name", spec.agent_name, self.settings.limits.max_agent_name_length, required=False)
        check_deployment(spec.deployment)
        if worker_id in self.workers:
            raise InvalidArgument(f"worker {worker_id} is already registered")
        worker = Worker(id=worker_id or ids.new_id(ids.WORKER), spec=spec, registered_at=now)
        self.workers[worker.id] = worker
        self._workers_by_key.setdefault(worker.key, {})[worker.id] = worker
        self._match(worker.key, now)
        return worker

    def worker_status(
        self, worker_id: str, status: WorkerStatus | None, load: float, job_count: int, now: float
    ) -> None:
        """A status report: `status` None keeps the current one (proto3 optional not set)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        if status is not None:
            worker.status = status
        worker.load = min(max(load, 0.0), 1.0) if load == load else 1.0  # NaN counts as full
        worker.reported_jobs = max(job_count, 0)
        worker.assigned_since_report = 0
        for job in self._pending.get(worker.key, {}).values():
            job.tried_workers.discard(worker.id)
        if worker.accepting:
            self._match(worker.key, now)

    def worker_disconnected(self, worker_id: str, now: float, lost: str = "") -> None:
        """The worker's connection is gone: offers move on, its jobs wait `reconnect_grace` for it.

        `lost` says why the worker cannot come back to this connection (its cluster node died): its jobs
        fail at once with that reason and follow their restart policy, without a back-off (the failure is
        not the job's, and the lease already made them wait). Their copies may still run, so a
        worker that reconnects elsewhere and lists them (migrate_job) takes them back if nobody else has."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        peers = self._workers_by_key[worker.key]
        del peers[worker.id]
        if not peers:
            del self._workers_by_key[worker.key]
        for job_id in list(worker.jobs):
            job = self.jobs[job_id]
            if job.status is JobStatus.OFFERED:
                self._back_to_pending(job, now, answered=False)
            elif lost:
                self._failed(job, lost, now, copy_may_live=True, backoff=False)
            else:
                job.orphan(now)

    def availability_answer(
        self, worker_id: str, job_id: str, answer: AvailabilityAnswer, now: float
    ) -> bool:
        """Apply a worker's answer to its offer; False when no such offer is open (late or unknown)."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.OFFERED or job.worker_id != worker_id:
            return False
        if answer.terminate:
            self._end_job(job, True, f"worker {worker_id} declined the job and asked to end it", now)
        elif not answer.available:
            self._back_to_pending(job, now)
        else:
            participant = AgentParticipant(
                identity=answer.identity or f"agent-{job.id}",
                name=answer.name,
                metadata=answer.metadata,
                attributes=dict(answer.attributes),
            )
            job.assign(participant.identity, now)
            self._stop_earlier_copy(job)
            self._disconnect_agents(job, lambda attempt: attempt != job.attempt)
            worker = self.workers[worker_id]
            worker.assigned_since_report += 1
            self._decisions.append(AssignJob(worker_id, job, participant, context=self._job_context(job)))
            worker.offered_job = ""
            self._match(worker.key, now)
        return True

    def job_update(self, worker_id: str, job_id: str, update: JobUpdate, error: str, now: float) -> bool:
        """Apply a worker's report on one of its jobs; False when the job is not (or no longer) its own.

        Reports are keyed by job, not connection: a reconnected worker flushes reports about jobs it ran
        under its previous worker id, and those still count while the job waits for it (orphaned).
        """
        job = self.jobs.get(job_id)
        worker = self.workers.get(worker_id)
        if job is not None and worker_id in job.stopping:
            # About the copy it was told to stop: the job is not offered to it meanwhile.
            if update is JobUpdate.RUNNING:  # launched after its termination came: stop it now
                self._decisions.append(TerminateJob(worker_id, job_id, "an earlier copy, being stopped"))
            else:
                self.copy_ended(worker_id, job_id, now)
            return True
        if job is not None and worker is not None and self._may_take_back(job, worker):
            if update is JobUpdate.RUNNING:
                # The previous attempt's copy started late, or its worker came back: take it back.
                self._revive(job, worker, now)
                job.reported = True
                return True
            job.earlier_copy_gone()  # it reported that copy's end
            return False
        if job is None or worker is None or not self._holds(worker, job):
            if update is JobUpdate.RUNNING:
                # The worker runs a job it does not hold (it ended, or runs elsewhere since): stop its copy.
                self._decisions.append(TerminateJob(worker_id, job_id, "job is not this worker's"))
            return False
        if job.orphaned_at is not None and job.worker_id != worker_id:
            self._reattach(job, worker, now)
        ran_on, first_report = job.worker_id, not job.reported
        job.reported = True
        if update is JobUpdate.RUNNING:
            if job.status is JobStatus.ASSIGNED:
                job.start(now)
                self._decisions.append(JobStarted(job))
            elif first_report:  # its agent joined first: the record is to say the worker reports
                self._decisions.append(JobChanged(job))
        elif update is JobUpdate.SUCCESS:
            self._end_job(job, True, error, now)
        else:
            self._failed(job, f"job failed on worker {ran_on}" + (f": {error}" if error else ""), now)
        return True

    def copy_ended(self, worker_id: str, job_id: str, now: float) -> bool:
        """The copy of the job that the worker was told to stop has ended (it reported so, or its end was
        reported to a node that is gone since): the worker may be offered the job again. False when the
        job does not wait for that."""
        job = self.jobs.get(job_id)
        if job is None or job.stopping.pop(worker_id, None) is None:
            return False
        if job.status is JobStatus.PENDING:
            self._offer_if_possible(job, now)
        return True

    def _holds(self, worker: Worker, job: Job) -> bool:
        """Whether the worker may report on the job: its own, or orphaned and of the worker's key."""
        if job.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            return False
        return job.worker_id == worker.id or (job.orphaned_at is not None and worker.key == self._key(job))

    def migrate_jobs(self, worker_id: str, job_ids: Iterable[str], now: float) -> None:
        """A reconnected worker lists the jobs it still runs: take back those that wait for it (orphaned
        in the reconnect grace, or restarted and not assigned to anyone since), stop the other copies."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        for job_id in dict.fromkeys(job_ids):
            job = self.jobs.get(job_id)
            if job is None:
                self._decisions.append(TerminateJob(worker_id, job_id, "job already ended"))
            elif job.worker_id == worker_id and job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING):
                continue
            elif worker.key != self._key(job):
                self._decisions.append(TerminateJob(worker_id, job_id, "job is not this worker's"))
            elif job.orphaned_at is not None:
                self._reattach(job, worker, now)
            elif self._may_take_back(job, worker):
                self._revive(job, worker, now, rematch=False)
            else:
                self._stop_listed_copy(job, worker, now)
        # Only now: offering a pending job while re-attaching could offer one the worker lists next.
        self._match(worker.key, now)

    def _stop_listed_copy(self, job: Job, worker: Worker, now: float) -> None:
        """The worker listed a copy of a job of its agent that is not to be taken back: stop it. Its
        reports on that copy name the job only, so the job is not offered to it before the copy's end (an
        offer it got on registering, before it listed the job, is withdrawn)."""
        running = job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING)
        where = f"job runs on worker {job.worker_id}" if running else "job was restarted"
        self._decisions.append(TerminateJob(worker.id, job.id, where))
        job.await_copy_end(worker.id, now + self.settings.start_timeout)
        if job.status is JobStatus.OFFERED and job.worker_id == worker.id:
            self._withdraw(job, now, rematch=False)

    def _reattach(self, job: Job, worker: Worker, now: float) -> None:
        self._release(job, now, rematch=False)
        job.reattach(worker.id, now)
        worker.jobs.add(job.id)
        self._decisions.append(JobChanged(job))

    def _may_take_back(self, job: Job, worker: Worker) -> bool:
        """Whether `worker` may be the one running the previous attempt's copy: its own worker, or (that
        one having disconnected) a reconnected worker of the same agent."""
        if not job.revivable or worker.key != self._key(job) or worker.id in job.stopping:
            return False
        previous = job.attempts[-1].worker_id
        return previous == worker.id or previous not in self.workers

    def _revive(self, job: Job, worker: Worker, now: float, *, rematch: bool = True) -> None:
        """Take back the previous attempt's copy, which runs on `worker`, withdrawing any open offer (the
        worker it was offered to, free again, is asked about the next pending job unless `rematch` is
        False)."""
        self._release(job, now, rematch=False)
        self._pending.get(self._key(job), {}).pop(job.id, None)
        offered_to = self.workers.get(job.worker_id) if job.status is JobStatus.OFFERED else None
        job.revive(worker.id, now)
        job.reported = True  # it said it runs the copy, or listed it: only a reporting framework does
        worker.jobs.add(job.id)
        self._decisions.append(JobChanged(job))
        if offered_to is not None and rematch:
            self._match(offered_to.key, now)

    # Operators

    def worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"worker {worker_id} is not connected")
        return worker

    def drain_worker(self, worker_id: str, now: float) -> Worker:
        """No new job goes to the worker; the jobs it holds go on. An offer it has not answered yet is
        taken back and goes to another worker (its late answer is ignored)."""
        worker = self.worker(worker_id)
        worker.drained = True
        self._decisions.append(WorkerDrained(worker_id, True))
        offered = self.jobs.get(worker.offered_job)
        if offered is not None:
            self._withdraw(offered, now)
        return worker

    def undrain_worker(self, worker_id: str, now: float) -> Worker:
        """The worker may get jobs again, the pending ones of its agent at once."""
        worker = self.worker(worker_id)
        worker.drained = False
        self._decisions.append(WorkerDrained(worker_id, False))
        if worker.accepting:
            self._match(worker.key, now)
        return worker

    def explain(self, room_name: str, dispatch_id: str, now: float) -> list[Explanation]:
        """Where each job of the room's dispatches (or of one) is, and why; a closed room's as they ended."""
        if self.find_room(room_name, now) is None:
            raise NotFound("requested room does not exist")
        dispatches = self.list_dispatches(room_name, dispatch_id, now)
        if dispatch_id and not dispatches:
            raise NotFound("dispatch ID not found")
        return [
            explanation
            for dispatch in dispatches
            for explanation in (
                [self._explain_job(dispatch, job) for job in dispatch.jobs]
                or [self._explain_no_job(dispatch)]
            )
        ]

    @staticmethod
    def _explain_no_job(dispatch: Dispatch) -> Explanation:
        summary = (
            f"no job was launched: when the dispatch was created, the workers of {who(dispatch.agent_name)} "
            "took only publisher or participant jobs, which start when a participant publishes or joins"
        )
        return Explanation(dispatch.id, dispatch.agent_name, "", None, summary, since=dispatch.created_at)

    def _explain_job(self, dispatch: Dispatch, job: Job) -> Explanation:
        workers: tuple[WorkerVerdict, ...] = ()
        if job.ended:
            summary, since = job.error or f"{job.status.value} without a reason given", job.ended_at
        elif job.orphaned_at is not None:
            summary = f"its worker {job.worker_id} disconnected: the job waits for it to reconnect"
            since = job.orphaned_at
        elif job.status is JobStatus.PENDING and job.retry_at is not None:
            summary, since = f"attempt {job.attempt} waits out its restart back-off", job.updated_at
        elif job.status is JobStatus.PENDING:
            summary, since, workers = self._why_pending(job, "yet"), job.pending_since, self._verdicts(job)
        elif job.status is JobStatus.OFFERED:
            summary, since = f"offered to {job.worker_id}, waiting for its answer", job.offered_at
        elif job.status is JobStatus.ASSIGNED:
            summary, since = f"assigned to {job.worker_id}, waiting for it to start", job.updated_at
        else:
            summary, since = f"running on {job.worker_id}", job.started_at
        return Explanation(
            dispatch.id,
            dispatch.agent_name,
            job.id,
            job.status,
            summary,
            workers,
            since,
            self._job_deadline(job),
            tuple(f"attempt {a.number} on {a.worker_id or '-'}: {a.error}" for a in job.attempts),
        )

    # Server lifecycle

    def drain(self) -> None:
        """Stop taking new rooms and dispatches and stop offering jobs; running jobs go on."""
        self.draining = True

    def end_unattended_jobs(self, now: float) -> int:
        """While draining: nobody is left to be served by the jobs of a room where no non-agent participant
        remains, so they end now (their workers told) instead of at the end of the drain. How many ended."""
        if not self.draining:
            return 0
        ended = 0
        for room in self.rooms.values():
            if room.num_participants:
                continue
            for dispatch in room.dispatches.values():
                for job in dispatch.jobs:
                    if not job.ended:
                        self._terminate(job, UNATTENDED_AT_SHUTDOWN, now)
                        ended += 1
        return ended

    def busy_jobs(self) -> int:
        """Jobs that are assigned to or running on a worker."""
        return sum(1 for job in self.jobs.values() if job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING))

    def shut_down(self, now: float) -> None:
        """End every job that has not ended, telling workers to stop the ones they run."""
        for job in list(self.jobs.values()):
            self._terminate(job, "terminated: server shut down", now)

    def hand_over_rooms(self, reason: str, now: float) -> None:
        """This node may no longer act for its rooms (it lost its lease): each closes here, participants
        disconnected and workers told to stop its jobs, but what the store keeps of it stays as it was, so
        the node that takes it over restores it and runs its jobs again."""
        for room in list(self.rooms.values()):
            self._close_room(room, reason, now, handed_over=True)

    def close_all_rooms(self, now: float) -> None:
        """The server stops: every room closes, its participants disconnected (nobody waits for a timeout)."""
        for room in list(self.rooms.values()):
            self._close_room(room, "server shut down", now)

    # Time

    def tick(self, now: float) -> None:
        """Apply every deadline that has passed: idle rooms close, jobs move on or fail with a reason."""
        for room in list(self.rooms.values()):
            closing = room.close_deadline()
            if closing is not None and now >= closing[0]:
                self._close_room(room, closing[1], now)
        for job in list(self.jobs.values()):
            deadline = self._job_deadline(job)
            if deadline is not None and now >= deadline and not job.ended:
                self._job_deadline_passed(job, now)
        self.history.expire(now)

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` has something to do, or None."""
        deadlines = [c[0] for room in self.rooms.values() if (c := room.close_deadline()) is not None]
        deadlines += [d for job in self.jobs.values() if (d := self._job_deadline(job)) is not None]
        if (expiry := self.history.next_expiry()) is not None:
            deadlines.append(expiry)
        return min(deadlines, default=None)

    def _job_deadline(self, job: Job) -> float | None:
        s = self.settings
        if job.orphaned_at is not None:
            return job.orphaned_at + s.reconnect_grace
        match job.status:
            case JobStatus.PENDING if job.stopping:
                # Not failed for want of a worker while one is held back: the pending timeout waits.
                return (
                    min(job.stopping.values())
                    if job.retry_at is None
                    else min(job.retry_at, *job.stopping.values())
                )
            case JobStatus.PENDING:
                return job.retry_at if job.retry_at is not None else job.pending_since + s.pending_timeout
            case JobStatus.OFFERED:
                return job.offered_at + s.availability_timeout
            case JobStatus.ASSIGNED:
                return job.updated_at + s.start_timeout
        return None

    def _job_deadline_passed(self, job: Job, now: float) -> None:
        s = self.settings
        worker_id = job.worker_id
        if job.orphaned_at is not None:
            self._failed(job, f"worker {worker_id} disconnected", now, copy_may_live=True)
        elif job.status is JobStatus.PENDING and job.stopped_waiting(now):
            self._offer_if_possible(job, now)  # no end reported in time: its worker may be asked again
        elif job.status is JobStatus.PENDING and job.retry_at is not None:
            job.start_waiting(now)
            self._offer_if_possible(job, now)
        elif job.status is JobStatus.PENDING:
            self._end_job(job, False, self._pending_failure(job), now)
        elif job.status is JobStatus.OFFERED:
            self._back_to_pending(job, now, answered=False)
        else:
            # Neither reported running nor joined. The framework may still be waiting for a process to
            # run it in: that copy is not stopped now, but taken back if it starts before another copy
            # is assigned, and stopped then otherwise. This worker is not asked again for the job.
            job.excluded_workers.add(worker_id)
            reason = f"worker {worker_id} did not start the job within {s.start_timeout:g}s"
            self._failed(job, reason, now, copy_may_live=True)

    def _pending_failure(self, job: Job) -> str:
        """Why nobody took the job: each worker of its agent, with what it reported and answered."""
        return self._why_pending(job, f"within {self.settings.pending_timeout:g}s")

    def _why_pending(self, job: Job, when: str) -> str:
        """Why the pending job was not taken `when` ("yet", "within 60s"): no worker of its agent (and
        what the connected ones serve), the server draining, or each worker's own cause."""
        workers = self._workers_by_key.get(self._key(job), {})
        if not workers:
            others = registered_keys(self._workers_by_key)
            return f"no worker registered for {who(job.agent_name)} {when} ({others})"
        if self.draining:
            return f"not offered {when}: the server is draining"
        verdicts = ", ".join(str(verdict) for verdict in self._verdicts(job))
        return f"no worker took the job for {who(job.agent_name)} {when}: {verdicts}"

    def _verdicts(self, job: Job) -> tuple[WorkerVerdict, ...]:
        s = self.settings
        workers = self._workers_by_key.get(self._key(job), {}).values()
        return tuple(worker_verdict(job, w, s.load_threshold, s.availability_timeout) for w in workers)


def _room_started(room: Room, *, restored: bool = False) -> RoomStarted:
    return RoomStarted(
        room.name,
        room.sid,
        created_at=room.created_at,
        empty_timeout=room.empty_timeout,
        departure_timeout=room.departure_timeout,
        max_participants=room.max_participants,
        metadata=room.metadata,
        restored=restored,
    )
