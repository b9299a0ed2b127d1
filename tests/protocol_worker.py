"""A hand-driven `/agent` worker, speaking the protocol frame by frame as a livekit-agents worker does,
and an HTTP client for the dispatch API: shared by the process and in-process tiers of the tests."""

import json
import time
import uuid
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import WSMsgType
from livekit import api
from livekit.protocol import agent

from tests.polling import eventually

DEADLINE = 5.0
DISPATCH = "/twirp/livekit.AgentDispatchService/"


class Endpoint(Protocol):
    """A server under test, whether a process (tests.conftest.Server) or in this process."""

    @property
    def http_url(self) -> str: ...

    @property
    def ws_url(self) -> str: ...

    @property
    def api_key(self) -> str: ...

    @property
    def api_secret(self) -> str: ...

    def token(self, ttl: float = 600, **grants: Any) -> str: ...


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register_message(agent_name: str, version: str = "test") -> agent.WorkerMessage:
    return agent.WorkerMessage(register=agent.RegisterWorkerRequest(agent_name=agent_name, version=version))


AVAILABLE = agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE))


def answer(job_id: str, available: bool = True, identity: str = "") -> agent.WorkerMessage:
    response = agent.AvailabilityResponse(job_id=job_id, available=available, participant_identity=identity)
    return agent.WorkerMessage(availability=response)


def job_update(job_id: str, status: int, error: str = "") -> agent.WorkerMessage:
    return agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id=job_id, status=status, error=error))


def ping(timestamp: int) -> agent.WorkerMessage:
    return agent.WorkerMessage(ping=agent.WorkerPing(timestamp=timestamp))


def describe(frame: aiohttp.WSMessage) -> str:
    if frame.type is WSMsgType.BINARY:
        return f"ServerMessage {agent.ServerMessage.FromString(frame.data)}"
    return f"{frame.type.name} {frame.data!r}"


class Worker:
    """One hand-driven `/agent` connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = ""

    async def send(self, message: agent.WorkerMessage) -> None:
        await self.ws.send_bytes(message.SerializeToString())

    async def receive(self, within: float = DEADLINE) -> agent.ServerMessage:
        frame = await self.ws.receive(timeout=within)
        assert frame.type is WSMsgType.BINARY, f"expected a binary ServerMessage, got {describe(frame)}"
        return agent.ServerMessage.FromString(frame.data)

    async def expect(self, kind: str, within: float = DEADLINE) -> Any:
        message = await self.receive(within)
        assert message.WhichOneof("message") == kind, f"expected {kind}, got {message}"
        return getattr(message, kind)

    async def register(self, agent_name: str) -> "Worker":
        await self.send(register_message(agent_name))
        response = await self.expect("register")
        self.id = response.worker_id
        await self.send(AVAILABLE)
        return self

    async def expect_silence(self, seconds: float) -> None:
        try:
            frame = await self.ws.receive(timeout=seconds)
        except TimeoutError:
            return
        pytest.fail(f"expected nothing for {seconds}s, got {describe(frame)}")

    async def until_closed(self, within: float = DEADLINE) -> tuple[int | None, list[str]]:
        """Read until the server closes: its close code, and the frames received before the close."""
        seen: list[str] = []
        deadline = time.monotonic() + within
        while True:
            frame = await self.ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if frame.type is WSMsgType.CLOSE:
                return frame.data, seen
            if frame.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return self.ws.close_code, seen
            seen.append(describe(frame))


class Client:
    """An HTTP session against the server: worker sockets and the dispatch API."""

    def __init__(self, server: Endpoint, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        headers = {"Authorization": f"Bearer {self.server.token(agent=True)}"}
        ws = await self.session.ws_connect(f"{self.server.ws_url}/agent", headers=headers)
        self.sockets.append(ws)
        return ws

    async def open(self) -> Worker:
        return Worker(await self.connect())

    async def worker(self, agent_name: str) -> Worker:
        """A registered worker reporting itself available, as the Python SDK does right after registering."""
        return await (await self.open()).register(agent_name)

    async def twirp(self, method: str, room: str, body: dict[str, Any]) -> dict[str, Any]:
        token = self.server.token(room_admin=True, room=room)
        async with self.session.post(
            self.server.http_url + DISPATCH + method, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            text = await response.text()
            assert response.status == 200, f"{method}: {response.status} {text}"
            result: dict[str, Any] = json.loads(text)
            return result

    async def create_dispatch(self, room: str, agent_name: str, metadata: str = "") -> dict[str, Any]:
        body = {"room": room, "agent_name": agent_name, "metadata": metadata}
        return await self.twirp("CreateDispatch", room, body)

    async def job(self, room: str, job_id: str) -> dict[str, Any]:
        listed = await self.twirp("ListDispatch", room, {"room": room})
        jobs = [job for d in listed["agent_dispatches"] for job in d["state"]["jobs"] if job["id"] == job_id]
        assert jobs, f"job {job_id} in {listed}"
        return jobs[-1]  # its current attempt: earlier ones are listed before it

    async def job_status(self, room: str, job_id: str, status: str) -> dict[str, Any]:
        """The job as ListDispatch shows it, once its status is `status`."""
        return await eventually(
            lambda: self.job(room, job_id),
            f"job {job_id} {status}",
            DEADLINE,
            accept=lambda j: j["state"]["status"] == status,
            poll=0.02,
        )

    async def run_job(self, worker: Worker, agent_name: str) -> tuple[str, str]:
        """Dispatch a job to `worker`, accept it and report it running: (room, job id)."""
        room = unique("room")
        await self.create_dispatch(room, agent_name)
        offer = await worker.expect("availability")
        await worker.send(answer(offer.job.id, identity=f"agent-{offer.job.id}"))
        assignment = await worker.expect("assignment")
        assert assignment.job.id == offer.job.id
        await worker.send(job_update(offer.job.id, agent.JS_RUNNING))
        running = await self.job_status(room, offer.job.id, "JS_RUNNING")
        assert running["state"]["worker_id"] == worker.id
        return room, offer.job.id


def only_job(dispatch: dict[str, Any]) -> dict[str, Any]:
    [job] = dispatch["state"]["jobs"]
    return job  # type: ignore[no-any-return]


async def worker_running_a_new_rooms_job(
    session: aiohttp.ClientSession, server: Any, lk: api.LiveKitAPI, room: str, agent_name: str
) -> tuple["Worker", str]:
    """A worker for `agent_name` that accepted and reported running the job of `room`, created now with
    that agent (CreateRoom through the Python server SDK `lk`): the worker and the job id."""
    headers = {"Authorization": f"Bearer {server.token(agent=True)}"}
    worker = await Worker(await session.ws_connect(f"{server.ws_url}/agent", headers=headers)).register(
        agent_name
    )
    await lk.room.create_room(
        api.CreateRoomRequest(name=room, agents=[api.RoomAgentDispatch(agent_name=agent_name)])
    )
    offer = await worker.expect("availability")
    await worker.send(answer(offer.job.id, identity=f"{agent_name}-agent"))
    await worker.expect("assignment")
    await worker.send(job_update(offer.job.id, agent.JS_RUNNING))
    return worker, offer.job.id
