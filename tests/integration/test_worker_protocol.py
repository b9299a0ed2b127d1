"""The `/agent` worker protocol driven by hand over a raw WebSocket against a server process, as a
livekit-agents worker speaks it: auth at the upgrade, framing (binary and protojson text), the job exchange,
workers lost while holding jobs, migration. Protocol violations, heartbeat loss and connection churn are
tested in process, on the engine's state (tests/inprocess/test_worker_sessions.py)."""

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

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
from tests.protocol_worker import (
    AVAILABLE,
    DEADLINE,
    Client,
    Worker,
    answer,
    describe,
    job_update,
    ping,
    register_message,
    unique,
)

PING_INTERVAL = 5  # agents.ping_interval
REGISTER_TIMEOUT = 1.0
VIOLATION_CLOSE_DELAY = 0.2
AVAILABILITY_TIMEOUT = 1.0
RECONNECT_GRACE = 0.5
TICK = 1.0  # the server's deadline loop wakes at least this often
SLACK = 0.05  # client-side timing measured after the server started its clock


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


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        instance = Client(server, session)
        yield instance
        for ws in instance.sockets:
            await ws.close()


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
