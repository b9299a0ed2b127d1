"""The `/agent` endpoint and the connected workers: authentication before the upgrade, and the engine's
job decisions (offer, assign, terminate) carried to the right worker."""

import logging
from collections.abc import Mapping
from typing import Protocol

from aiohttp import WSCloseCode, web
from livekit.protocol import agent, models

from switchboard.auth.grants import InvalidToken
from switchboard.auth.tokens import TokenVerifier, mint_job_token
from switchboard.core.events import AgentParticipant, AssignJob, JobContext, OfferJob, TerminateJob
from switchboard.core.jobs import Job
from switchboard.core.workers import WorkerSpec
from switchboard.runtime import Runtime
from switchboard.wire import job_to_proto, participant_to_proto, room_to_proto
from switchboard.workers.session import WorkerSession, WorkerSettings

log = logging.getLogger("switchboard.workers")


class WorkerRelay(Protocol):
    """Dispatch across cluster nodes (`switchboard.cluster.workers`): told of this node's workers, and
    handed the worker messages about jobs another node owns."""

    def registered(self, worker_id: str, spec: WorkerSpec) -> None: ...

    def gone(self, worker_id: str) -> None: ...

    def intercept(self, session: WorkerSession, message: agent.WorkerMessage) -> bool:
        """Whether the message was carried to another node (and needs nothing more here)."""
        ...


class WorkerHub:
    def __init__(
        self,
        runtime: Runtime,
        verifier: TokenVerifier,
        keys: Mapping[str, str],
        settings: WorkerSettings,
        server_info: models.ServerInfo,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.sessions: dict[str, WorkerSession] = {}
        self.server_info = server_info
        self._verifier = verifier
        self._keys = keys
        self.relay: WorkerRelay | None = None
        """Set on a cluster node; None when the node runs alone."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /agent`: refuse bad credentials before upgrading (a refused upgrade makes the worker back
        off; an accepted-then-closed socket makes it reconnect at once, forever)."""
        ws = web.WebSocketResponse(
            heartbeat=self.settings.ping_interval, max_msg_size=self.settings.max_message_size
        )
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=400, text="/agent expects a WebSocket upgrade (LiveKit worker protocol)\n"
            )
        try:
            claims = self._verifier.verify_request(request.headers, request.query)
        except InvalidToken as exc:
            return web.Response(status=401, text=f"{exc}\n")
        if not claims.video.agent:
            return web.Response(status=401, text="permissions denied: the token lacks the agent grant\n")
        if self.runtime.engine.draining:
            return web.Response(status=503, text="the server is shutting down\n")
        api_key, peer = claims.api_key, request.remote or ""
        del claims  # not kept for the life of the connection
        await ws.prepare(request)
        await WorkerSession(self, ws, request.transport, api_key, peer).run()
        return ws

    async def close_all(self) -> None:
        """Close every worker connection, telling workers the server is going away (they reconnect later)."""
        for session in list(self.sessions.values()):
            await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    # The engine's decisions (wired in switchboard.effects)

    def offer(self, decision: OfferJob) -> None:
        if decision.job.ended:  # its room closed later in the same engine step
            return
        job = job_message(decision.job, decision.context)
        self.send_offer(self.sessions[decision.worker_id], job, decision.resuming)

    def assign(self, decision: AssignJob) -> None:
        if decision.job.ended:
            return
        job = decision.job
        message = job_message(job, decision.context)
        self.send_assignment(self.sessions[decision.worker_id], message, job.attempt, decision.participant)

    @staticmethod
    def send_offer(session: WorkerSession, job: agent.Job, resuming: bool) -> None:
        request = agent.AvailabilityRequest(job=job, resuming=resuming)
        session.send(agent.ServerMessage(availability=request))

    def send_assignment(
        self,
        session: WorkerSession,
        job: agent.Job,
        attempt: int,
        participant: AgentParticipant,
        url: str = "",
    ) -> None:
        """The job with a token to join its room as `participant`; `url`: the room's node, when it is not
        this one (livekit-agents joins there instead of where its worker connected)."""
        token = mint_job_token(
            session.api_key,
            self._keys[session.api_key],
            room=job.room.name,
            job_id=job.id,
            attempt=attempt,
            agent_name=session.agent_name,
            identity=participant.identity,
            name=participant.name,
            metadata=participant.metadata,
            attributes=participant.attributes,
            permissions=session.permissions,
        )
        assignment = agent.JobAssignment(job=job, token=token, url=url or None)
        session.send(agent.ServerMessage(assignment=assignment))

    def terminate(self, decision: TerminateJob) -> None:
        session = self.sessions.get(decision.worker_id)
        if session is not None:
            session.send(agent.ServerMessage(termination=agent.JobTermination(job_id=decision.job_id)))


def job_message(job: Job, context: JobContext) -> agent.Job:
    target = participant_to_proto(context.target) if context.target is not None else None
    return job_to_proto(job, context.dispatch, room_to_proto(context.room), target)
