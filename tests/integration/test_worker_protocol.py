"""The `/agent` worker protocol driven by hand over a raw WebSocket, as a livekit-agents worker speaks it:
auth at the upgrade, framing (binary and protojson text), the job exchange, protocol violations,
workers lost while holding jobs, migration, and connection churn."""

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType
from google.protobuf import json_format
from livekit.protocol import agent

from switchboard import __version__
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from tests.conftest import Server, start_server, stop_server

T = TypeVar("T")

DEADLINE = 5.0
PING_INTERVAL = 5  # agents.ping_interval: a peer that answers no ping is dropped after 1.5 of these
REGISTER_TIMEOUT = 1.0
VIOLATION_CLOSE_DELAY = 0.2
AVAILABILITY_TIMEOUT = 1.0
RECONNECT_GRACE = 0.5
TICK = 1.0  # the server's deadline loop wakes at least this often
SLACK = 0.05  # client-side timing measured after the server started its clock
DISPATCH = "/twirp/livekit.AgentDispatchService/"
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(
        tmp_path_factory.mktemp("worker-protocol"),
        {
            "agents": {
                "register_timeout": REGISTER_TIMEOUT,
                "violation_close_delay": VIOLATION_CLOSE_DELAY,
                "availability_timeout": AVAILABILITY_TIMEOUT,
                "pending_timeout": 30,
                "ping_interval": PING_INTERVAL,
                "reconnect_grace": RECONNECT_GRACE,
                "restart_backoff": 0.1,
            }
        },
    )
    yield instance
    stop_server(instance)


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


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = DEADLINE
) -> T:
    """Poll `probe` until `accept` holds for its value; fail with the last value at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(0.02)


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

    def __init__(self, server: Server, session: aiohttp.ClientSession) -> None:
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
        return await eventually(lambda: self.job(room, job_id), lambda j: j["state"]["status"] == status)

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


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        instance = Client(server, session)
        yield instance
        for ws in instance.sockets:
            await ws.close()


def only_job(dispatch: dict[str, Any]) -> dict[str, Any]:
    [job] = dispatch["state"]["jobs"]
    return job  # type: ignore[no-any-return]


# Authentication happens before the upgrade: a refused upgrade makes the worker back off.


async def assert_refused(client: Client, token: str | None, status: int = 401) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.session.ws_connect(f"{client.server.ws_url}/agent", headers=headers)
    assert refused.value.status == status


async def test_upgrade_without_a_token_is_401(client: Client) -> None:
    await assert_refused(client, None)


async def test_upgrade_with_a_bad_signature_is_401(client: Client, server: Server) -> None:
    forged = mint_token(
        server.api_key, "not-the-secret-but-long-enough-for-hs256", video=VideoGrant(agent=True)
    )
    await assert_refused(client, forged)


async def test_upgrade_with_an_expired_token_is_401(client: Client, server: Server) -> None:
    # Expired an hour ago: well past the server's leeway.
    expired = mint_token(
        server.api_key, server.api_secret, video=VideoGrant(agent=True), ttl=60, now=time.time() - 3600
    )
    await assert_refused(client, expired)


async def test_upgrade_without_the_agent_grant_is_401(client: Client, server: Server) -> None:
    await assert_refused(client, server.token(room_join=True, room="some-room"))
    await assert_refused(client, server.token(room_admin=True, room="some-room"))


async def test_token_in_the_access_token_query_parameter(client: Client, server: Server) -> None:
    url = f"{server.ws_url}/agent?access_token={server.token(agent=True)}"
    ws = await client.session.ws_connect(url)
    client.sockets.append(ws)
    worker = await Worker(ws).register(unique("query"))
    assert worker.id.startswith("AW_")


async def test_plain_get_without_upgrade_headers_is_400(client: Client, server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.token(agent=True)}"}
    async with client.session.get(f"{server.http_url}/agent", headers=headers) as response:
        assert response.status == 400


# The exchange


async def test_register_offer_assign_run_and_succeed(client: Client, server: Server) -> None:
    name = "proto-x"
    worker = await client.open()
    await worker.send(register_message(name))
    first = await worker.receive()
    assert first.WhichOneof("message") == "register", "the register response must be the first frame"
    worker.id = first.register.worker_id
    assert worker.id.startswith("AW_")
    info = first.register.server_info
    assert info.version and info.protocol > 0 and info.node_id.startswith("ND_")
    # Workers see the LiveKit version clients see (README, Compatibility); Switchboard's own is beside it.
    assert (info.version, info.protocol, info.debug_info) == ("1.9.0", 16, f"switchboard {__version__}")
    await worker.send(AVAILABLE)

    room = unique("room")
    dispatch = await client.create_dispatch(room, name, metadata='{"user": 1}')
    offer = await worker.expect("availability")
    job = offer.job
    assert job.id.startswith("AJ_") and not offer.resuming
    assert job.room.name == room and job.dispatch_id == dispatch["id"]
    assert job.metadata == '{"user": 1}' and job.agent_name == name and job.type == agent.JT_ROOM

    identity = f"agent-{job.id}"
    accept = agent.AvailabilityResponse(
        job_id=job.id,
        available=True,
        participant_identity=identity,
        participant_name="Bot",
        participant_attributes={"lk.agent.name": name, "x": "y"},
    )
    await worker.send(agent.WorkerMessage(availability=accept))
    assignment = await worker.expect("assignment")
    assert assignment.job.id == job.id
    claims = jwt.decode(assignment.token, options={"verify_signature": False})
    assert claims["iss"] == server.api_key and claims["sub"] == identity and claims["name"] == "Bot"
    assert claims["kind"] == "agent"
    assert claims["video"]["roomJoin"] is True and claims["video"]["room"] == room
    assert claims["video"]["agent"] is True
    assert claims["attributes"] == {"lk.agent.name": name, "x": "y", "lk.agent_name": name}

    await worker.send(job_update(job.id, agent.JS_RUNNING))
    running = await client.job_status(room, job.id, "JS_RUNNING")
    assert running["state"]["worker_id"] == worker.id
    assert running["state"]["participant_identity"] == identity

    await worker.send(job_update(job.id, agent.JS_SUCCESS))
    done = await client.job_status(room, job.id, "JS_SUCCESS")
    assert done["state"]["worker_id"] == worker.id


async def test_json_text_frames_get_json_text_replies(client: Client) -> None:
    name = unique("json")
    ws = await client.connect()

    async def receive_json() -> tuple[dict[str, Any], agent.ServerMessage]:
        frame = await ws.receive(timeout=DEADLINE)
        assert frame.type is WSMsgType.TEXT, f"expected a JSON text reply, got {describe(frame)}"
        return json.loads(frame.data), json_format.Parse(frame.data, agent.ServerMessage())

    await ws.send_str(json.dumps({"register": {"agent_name": name, "version": "json"}}))
    raw, message = await receive_json()
    assert message.WhichOneof("message") == "register" and message.register.worker_id.startswith("AW_")
    assert "workerId" in raw["register"], "protojson, as LiveKit writes it: lowerCamelCase names"
    await ws.send_str(json.dumps({"updateWorker": {"status": "WS_AVAILABLE"}}))

    await ws.send_str(json.dumps({"ping": {"timestamp": "1234"}}))
    raw, message = await receive_json()
    assert message.pong.last_timestamp == 1234 and raw["pong"]["lastTimestamp"] == "1234"

    room = unique("room")
    await client.create_dispatch(room, name, metadata="m")
    raw, message = await receive_json()
    job = message.availability.job
    assert job.id.startswith("AJ_") and job.room.name == room and job.metadata == "m"
    reply = {"availability": {"jobId": job.id, "available": True, "participantIdentity": "json-agent"}}
    await ws.send_str(json.dumps(reply))
    raw, message = await receive_json()
    assert message.assignment.job.id == job.id
    assert jwt.decode(message.assignment.token, options={"verify_signature": False})["sub"] == "json-agent"

    # A binary frame switches the replies back to binary.
    worker = Worker(ws)
    await worker.send(ping(99))
    assert (await worker.expect("pong")).last_timestamp == 99


async def test_ping_gets_a_pong_echoing_the_timestamp(client: Client) -> None:
    worker = await client.worker(unique("ping"))
    for sent in (int(time.time() * 1000), 1, 2**62):
        before = int(time.time() * 1000)
        await worker.send(ping(sent))
        pong = await worker.expect("pong")
        assert pong.last_timestamp == sent
        assert before - 1000 <= pong.timestamp <= int(time.time() * 1000) + 1000, "server time in ms"


# Protocol violations close only the offending connection, with 1008, after the configured delay.


@dataclass(frozen=True)
class Violation:
    registers_first: bool
    code: int
    min_delay: float
    act: Callable[[Worker, str], Awaitable[None]]


async def _send_update_worker(bad: Worker, agent_name: str) -> None:
    await bad.send(AVAILABLE)


async def _send_register(bad: Worker, agent_name: str) -> None:
    await bad.send(register_message(agent_name))


async def _send_garbage(bad: Worker, agent_name: str) -> None:
    await bad.ws.send_bytes(b"\xff\xff\xff\xff")


async def _send_bad_json(bad: Worker, agent_name: str) -> None:
    await bad.ws.send_str('{"update_worker": {"status": ')


async def _send_empty(bad: Worker, agent_name: str) -> None:
    await bad.ws.send_bytes(agent.WorkerMessage().SerializeToString())


async def _send_nothing(bad: Worker, agent_name: str) -> None:
    return


async def _send_oversized_register(bad: Worker, agent_name: str) -> None:
    # The server may close as soon as it reads the frame's length, before all of it was written.
    with contextlib.suppress(ConnectionError):
        await bad.send(register_message(agent_name, version="v" * (3 * 1024 * 1024)))


VIOLATIONS = {
    "first-message-not-register": Violation(
        False, POLICY_VIOLATION, VIOLATION_CLOSE_DELAY, _send_update_worker
    ),
    "second-register": Violation(True, POLICY_VIOLATION, VIOLATION_CLOSE_DELAY, _send_register),
    "garbage-binary": Violation(True, POLICY_VIOLATION, VIOLATION_CLOSE_DELAY, _send_garbage),
    "malformed-json": Violation(True, POLICY_VIOLATION, VIOLATION_CLOSE_DELAY, _send_bad_json),
    "empty-worker-message": Violation(True, POLICY_VIOLATION, VIOLATION_CLOSE_DELAY, _send_empty),
    "no-register-in-time": Violation(
        False, POLICY_VIOLATION, REGISTER_TIMEOUT + VIOLATION_CLOSE_DELAY, _send_nothing
    ),
    "oversized-frame": Violation(False, MESSAGE_TOO_BIG, 0.0, _send_oversized_register),
}


@pytest.mark.parametrize("case", VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_violation_closes_only_the_offending_connection(client: Client, case: Violation) -> None:
    name = unique("violation")
    good = await client.worker(name)
    bad = await client.open()
    if case.registers_first:
        await bad.register(name)
    started = time.monotonic()
    await case.act(bad, name)
    code, seen = await bad.until_closed(within=case.min_delay + DEADLINE)
    elapsed = time.monotonic() - started
    assert code == case.code
    assert elapsed >= case.min_delay - SLACK, f"closed after {elapsed:.3f}s, before the configured delay"
    assert seen == [], f"the violating worker got {seen} before the close"
    assert bad.ws.closed

    # The well-behaved worker, connected before the violation, still gets (all of) the work.
    room = unique("room")
    dispatch = await client.create_dispatch(room, name)
    assert only_job(dispatch)["state"]["worker_id"] == good.id, "offered at once to the remaining worker"
    offer = await good.expect("availability")
    assert offer.job.dispatch_id == dispatch["id"]
    await good.send(ping(7))
    assert (await good.expect("pong")).last_timestamp == 7


# Workers lost while holding jobs


async def test_worker_lost_with_an_offer_pending_passes_the_offer_on(client: Client) -> None:
    name = unique("offered")
    first = await client.worker(name)
    room = unique("room")
    await client.create_dispatch(room, name)
    offer = await first.expect("availability")
    second = await client.worker(name)  # registered after the offer: nothing pending for it yet
    closed_at = time.monotonic()
    await first.ws.close()
    passed = await second.expect("availability")
    assert passed.job.id == offer.job.id and not passed.resuming
    assert time.monotonic() - closed_at < AVAILABILITY_TIMEOUT - 0.3, "moved on at the close, not on timeout"
    await second.send(answer(offer.job.id, identity="second"))
    assert (await second.expect("assignment")).job.id == offer.job.id


async def test_worker_lost_while_running_a_job_is_resumed_elsewhere_after_the_grace(client: Client) -> None:
    name = unique("running")
    first = await client.worker(name)
    room, job_id = await client.run_job(first, name)
    second = await client.worker(name)
    closed_at = time.monotonic()
    await first.ws.close()
    offer = await second.expect("availability", within=RECONNECT_GRACE + TICK + DEADLINE)
    elapsed = time.monotonic() - closed_at
    assert offer.job.id == job_id and offer.resuming, "JRP_ON_FAILURE restarts the job, resuming"
    assert elapsed >= RECONNECT_GRACE - SLACK, f"re-offered {elapsed:.3f}s after the close, within the grace"
    await second.send(answer(job_id, identity="second"))
    assert (await second.expect("assignment")).job.id == job_id
    await second.send(job_update(job_id, agent.JS_RUNNING))
    job = await client.job_status(room, job_id, "JS_RUNNING")
    assert job["state"]["worker_id"] == second.id


async def test_reconnected_worker_claims_its_running_job_with_migrate_job(client: Client) -> None:
    name = unique("migrate")
    old = await client.worker(name)
    room, job_id = await client.run_job(old, name)
    bystander = await client.worker(name)
    await old.ws.close()
    new = await client.worker(name)
    assert new.id != old.id
    await new.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])))

    # Past the grace (and a wake-up of the server's deadline loop): offered to nobody, ended nowhere.
    quiet = RECONNECT_GRACE + TICK + 0.3
    await asyncio.gather(new.expect_silence(quiet), bystander.expect_silence(quiet))
    job = await client.job(room, job_id)
    assert job["state"]["status"] == "JS_RUNNING" and job["state"]["worker_id"] == new.id

    # The job now belongs to the new connection: its reports count.
    await new.send(job_update(job_id, agent.JS_SUCCESS))
    done = await client.job_status(room, job_id, "JS_SUCCESS")
    assert done["state"]["worker_id"] == new.id


# Robustness


async def test_a_thousand_connect_register_close_cycles(client: Client, server: Server) -> None:
    name = unique("churn")
    token = server.token(agent=True)
    headers = {"Authorization": f"Bearer {token}"}
    log_before = len(server.log())
    slots = asyncio.Semaphore(20)
    registered = 0

    async def cycle(i: int) -> None:
        nonlocal registered
        async with slots:
            ws = await client.session.ws_connect(f"{server.ws_url}/agent", headers=headers)
            try:
                await ws.send_bytes(register_message(name).SerializeToString())
                if i % 2 == 0:  # half wait for the answer; half close while the server registers them
                    response = await Worker(ws).expect("register")
                    assert response.worker_id.startswith("AW_")
                    registered += 1
            finally:
                await ws.close()

    started = time.monotonic()
    await asyncio.gather(*(cycle(i) for i in range(1000)))
    assert time.monotonic() - started < 20
    assert registered == 500

    # None of the closed workers lingers: a new one of the same agent gets the next job at once.
    normal = await client.worker(name)
    room = unique("room")
    dispatch = await client.create_dispatch(room, name)
    assert only_job(dispatch)["state"]["worker_id"] == normal.id
    assert (await normal.expect("availability")).job.dispatch_id == dispatch["id"]
    async with client.session.get(server.http_url + "/") as response:
        assert response.status == 200 and await response.text() == "OK"
    assert "Traceback" not in server.log()[log_before:]


async def test_late_and_unknown_answers_and_updates_are_ignored(client: Client) -> None:
    name = unique("late")
    first = await client.worker(name)
    await first.send(answer("AJ_unknown000", identity="nobody"))
    await first.send(job_update("AJ_unknown000", agent.JS_RUNNING))
    await first.send(job_update("AJ_unknown000", agent.JS_SUCCESS))
    await first.send(job_update("AJ_unknown000", agent.JS_FAILED))
    await first.send(ping(1))
    # Running a job the server never gave it: the worker is told to stop it, and nothing else happens.
    assert (await first.expect("termination")).job_id == "AJ_unknown000"
    assert (await first.expect("pong")).last_timestamp == 1, "still open, and nothing else was sent"

    room = unique("room")
    await client.create_dispatch(room, name)
    offer = await first.expect("availability")
    job_id = offer.job.id
    second = await client.worker(name)
    # The first worker does not answer in time: the offer moves to the second one.
    moved = await second.expect("availability", within=AVAILABILITY_TIMEOUT + TICK + DEADLINE)
    assert moved.job.id == job_id
    await first.send(answer(job_id, identity="too-late"))
    await first.send(ping(2))
    assert (await first.expect("pong")).last_timestamp == 2, "no assignment for a late accept"

    await second.send(answer(job_id, identity="second"))
    assert (await second.expect("assignment")).job.id == job_id
    # A report from a worker that does not hold the job changes nothing.
    await first.send(job_update(job_id, agent.JS_FAILED))
    await first.send(ping(3))
    assert (await first.expect("pong")).last_timestamp == 3
    await second.send(job_update(job_id, agent.JS_RUNNING))
    job = await client.job_status(room, job_id, "JS_RUNNING")
    assert job["state"]["worker_id"] == second.id and job["state"]["participant_identity"] == "second"
    await first.expect_silence(0.1)


async def test_a_worker_that_stops_answering_pings_is_logged_as_a_lost_connection(
    client: Client, server: Server
) -> None:
    """The server's heartbeat (agents.ping_interval) drops a silent peer: a lost connection, not a
    protocol violation (no 1008 close, no violation delay)."""
    headers = {"Authorization": f"Bearer {server.token(agent=True)}"}
    ws = await client.session.ws_connect(f"{server.ws_url}/agent", headers=headers, autoping=False)
    client.sockets.append(ws)
    silent = Worker(ws)
    await silent.register(unique("silent"))
    # Nothing is read from now on, so no ping is answered.
    deadline = time.monotonic() + PING_INTERVAL * 2 + DEADLINE
    while f"worker connection lost worker={silent.id}" not in server.log():
        assert time.monotonic() < deadline, "the silent worker was never dropped"
        await asyncio.sleep(0.1)
    assert f"protocol violation worker={silent.id}" not in server.log()


async def test_dispatch_get_lists_each_attempt_of_a_restarted_job(client: Client, server: Server) -> None:
    name = unique("restarted")
    worker = await client.worker(name)
    room, job_id = await client.run_job(worker, name)
    await worker.send(job_update(job_id, agent.JS_FAILED, error="exit code 1"))
    offer = await worker.expect("availability")  # restarted after the back-off, to the only worker
    assert offer.job.id == job_id and offer.resuming
    await worker.send(answer(job_id, identity=f"agent-{job_id}"))
    await worker.expect("assignment")
    await worker.send(job_update(job_id, agent.JS_RUNNING))
    await client.job_status(room, job_id, "JS_RUNNING")
    listed = (await client.twirp("ListDispatch", room, {"room": room}))["agent_dispatches"]
    [dispatch] = [d for d in listed if d["agent_name"] == name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.update(
        LIVEKIT_URL=server.http_url, LIVEKIT_API_KEY=server.api_key, LIVEKIT_API_SECRET=server.api_secret
    )
    command = ["dispatch", "get", "--room", room, "--id", dispatch["id"]]
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard", *command, env=env, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0
    shown = output.decode()
    rows = [line.split() for line in shown.splitlines() if line.startswith(job_id)]
    assert [row[1:4] for row in rows] == [["1", "failed", worker.id], ["2", "running", worker.id]], shown
    assert shown.splitlines()[-2].endswith(f"job failed on worker {worker.id}: exit code 1"), shown
