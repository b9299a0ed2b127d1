"""One connected worker: the worker protocol in, engine events out; engine decisions in, protocol out."""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web
from livekit.protocol import agent

from switchboard.auth.grants import VideoGrant
from switchboard.cluster.directory import RelayedJobs
from switchboard.core.engine import Engine
from switchboard.core.errors import CoreError
from switchboard.core.jobs import JobType
from switchboard.core.workers import AvailabilityAnswer, JobUpdate, WorkerSpec, WorkerStatus
from switchboard.websocket import ConnectionLost, MalformedMessage, MessageSender, fail, receive

if TYPE_CHECKING:
    from switchboard.workers.hub import WorkerHub

log = logging.getLogger("switchboard.workers")

# update_job statuses a worker may send; JS_CANCELLED (4, newer protocol) ends the job as failed.
JOB_UPDATES = {
    agent.JS_RUNNING: (JobUpdate.RUNNING, ""),
    agent.JS_SUCCESS: (JobUpdate.SUCCESS, ""),
    agent.JS_FAILED: (JobUpdate.FAILED, ""),
    4: (JobUpdate.FAILED, "cancelled by the worker"),
}


class ProtocolViolation(Exception):
    """The worker broke the protocol; the message says how, for the log and the close frame."""


@dataclass(frozen=True)
class WorkerSettings:
    register_timeout: float = 10.0
    ping_interval: float = 10.0
    max_message_size: int = 2 * 1024 * 1024
    violation_close_delay: float = 5.0
    """A worker reconnects at once after any close; waiting before closing keeps a broken one from
    hammering the server in a tight loop."""


def permissions_of(request: agent.RegisterWorkerRequest) -> VideoGrant:
    """The room grants that the worker's jobs get, from its registration (LiveKit's defaults if absent)."""
    if not request.HasField("allowed_permissions"):
        return VideoGrant(
            can_subscribe=True, can_publish=True, can_publish_data=True, can_update_own_metadata=True
        )
    p = request.allowed_permissions
    return VideoGrant(
        can_subscribe=p.can_subscribe,
        can_publish=p.can_publish,
        can_publish_data=p.can_publish_data,
        can_update_own_metadata=p.can_update_metadata,
        hidden=p.hidden,
    )


def status_of(report: agent.UpdateWorkerStatus) -> WorkerStatus | None:
    """The status a report sets; None when it sets none (proto3 optional not set, or unknown)."""
    if report.HasField("status") and report.status in WorkerStatus._value2member_map_:
        return WorkerStatus(report.status)
    return None


class WorkerSession:
    def __init__(
        self,
        hub: "WorkerHub",
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        api_key: str,
        peer: str,
    ) -> None:
        self.hub = hub
        self.ws = ws
        self._transport = transport
        self.api_key = api_key
        self.peer = peer
        self.worker_id = ""
        self.agent_name = ""
        self.permissions = VideoGrant()
        self.remote_jobs = RelayedJobs()
        """On a cluster node: this worker's jobs owned by other nodes."""
        self._sender = MessageSender(ws)

    def send(self, message: agent.ServerMessage) -> None:
        self._sender.send(message)

    async def _receive(self) -> agent.WorkerMessage | None:
        try:
            return await receive(self.ws, self._sender, agent.WorkerMessage)
        except MalformedMessage as exc:
            raise ProtocolViolation(str(exc)) from exc

    async def run(self) -> None:
        try:
            try:
                first = await asyncio.wait_for(self._receive(), self.hub.settings.register_timeout)
            except TimeoutError:
                raise ProtocolViolation(
                    f"no register message within {self.hub.settings.register_timeout:g}s"
                ) from None
            if first is None:
                return
            self._register(first)
            while (message := await self._receive()) is not None:
                self._handle(message)
        except ProtocolViolation as exc:
            await self._close_for_violation(str(exc))
        except ConnectionLost as exc:
            log.info(
                "worker connection lost worker=%s peer=%s reason=%r", self.worker_id, self.peer, str(exc)
            )
        finally:
            if self.worker_id:
                self._forget()
                log.info("worker disconnected worker=%s agent_name=%r", self.worker_id, self.agent_name)

    def _register(self, message: agent.WorkerMessage) -> None:
        if message.WhichOneof("message") != "register":
            raise ProtocolViolation("the first message must be register")
        request = message.register
        if request.type not in JobType._value2member_map_:
            raise ProtocolViolation(f"unknown worker type {request.type}")
        spec = WorkerSpec(
            agent_name=request.agent_name,
            job_type=JobType(request.type),
            deployment=request.deployment,
            version=request.version,
        )
        # Inside one gateway call: the register response is the first frame, and the offers that the
        # registration decides are carried out after it, once the session can be found by its worker id.
        self.hub.runtime.call(lambda engine: self._registered(engine, spec, request))

    def _registered(self, engine: Engine, spec: WorkerSpec, request: agent.RegisterWorkerRequest) -> None:
        try:
            worker = engine.register_worker(spec, self.hub.runtime.now())
        except CoreError as exc:
            raise ProtocolViolation(f"invalid registration: {exc}") from exc
        self.worker_id, self.agent_name = worker.id, spec.agent_name
        self.permissions = permissions_of(request)
        self.hub.sessions[worker.id] = self
        if self.hub.relay is not None:
            self.hub.relay.registered(worker.id, spec)
        self.send(
            agent.ServerMessage(
                register=agent.RegisterWorkerResponse(worker_id=worker.id, server_info=self.hub.server_info)
            )
        )
        log.info(
            "worker registered worker=%s agent_name=%r type=%s version=%s peer=%s",
            worker.id,
            spec.agent_name,
            spec.job_type.name,
            spec.version,
            self.peer,
        )

    def _handle(self, message: agent.WorkerMessage) -> None:
        relay = self.hub.relay
        if relay is not None and relay.intercept(self, message):
            return
        self.hub.runtime.call(lambda engine: self._apply(engine, message))

    def _apply(self, engine: Engine, message: agent.WorkerMessage) -> None:
        now = self.hub.runtime.now()
        kind = message.WhichOneof("message")
        if kind == "availability":
            a = message.availability
            answer = AvailabilityAnswer(
                available=a.available,
                terminate=a.terminate,
                identity=a.participant_identity,
                name=a.participant_name,
                metadata=a.participant_metadata,
                attributes=dict(a.participant_attributes),
            )
            if not engine.availability_answer(self.worker_id, a.job_id, answer, now):
                log.info("late or unknown availability answer worker=%s job=%s", self.worker_id, a.job_id)
        elif kind == "update_worker":
            report = message.update_worker
            engine.worker_status(self.worker_id, status_of(report), report.load, report.job_count, now)
        elif kind == "update_job":
            job_report = message.update_job
            if job_report.status not in JOB_UPDATES:
                return  # JS_PENDING carries nothing to act on
            update, default_error = JOB_UPDATES[job_report.status]
            error = job_report.error or default_error
            if not engine.job_update(self.worker_id, job_report.job_id, update, error, now):
                log.info("update for a job not held worker=%s job=%s", self.worker_id, job_report.job_id)
        elif kind == "migrate_job":
            engine.migrate_jobs(self.worker_id, message.migrate_job.job_ids, now)
        elif kind == "ping":
            pong = agent.WorkerPong(last_timestamp=message.ping.timestamp, timestamp=int(time.time() * 1000))
            self.send(agent.ServerMessage(pong=pong))
        elif kind == "simulate_job":
            log.info("simulate_job is not supported; ignored worker=%s", self.worker_id)
        elif kind == "register":
            raise ProtocolViolation("register sent twice")
        else:
            raise ProtocolViolation("empty WorkerMessage")

    def _forget(self) -> None:
        """The worker is gone: no more offers, and its jobs follow the engine's rules (and other nodes')."""
        runtime = self.hub.runtime
        self.hub.sessions.pop(self.worker_id, None)
        runtime.call(lambda engine: engine.worker_disconnected(self.worker_id, runtime.now()))
        if self.hub.relay is not None:
            self.hub.relay.gone(self.worker_id)

    async def _close_for_violation(self, reason: str) -> None:
        log.warning(
            "worker protocol violation worker=%s peer=%s reason=%r", self.worker_id, self.peer, reason
        )
        if self.worker_id:  # no more offers while we wait to close
            self._forget()
            self.worker_id = ""
        if not self.ws.closed:
            await asyncio.sleep(self.hub.settings.violation_close_delay)
            await fail(self.ws, self._transport, WSCloseCode.POLICY_VIOLATION, reason)
