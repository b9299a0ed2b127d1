"""Worker connections that misbehave or vanish, checked on the engine's own state: a protocol violation,
a peer that stops answering the heartbeat, and a thousand connect/register/close cycles each leave the
engine with exactly the workers that are really there, and the well-behaved workers keep getting the work."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from livekit.protocol import agent

from tests.inprocess.conftest import AppServer, StartApp
from tests.polling import eventually
from tests.protocol_worker import (
    AVAILABLE,
    DEADLINE,
    Client,
    Worker,
    only_job,
    ping,
    register_message,
    unique,
)

REGISTER_TIMEOUT = 0.5
VIOLATION_CLOSE_DELAY = 0.2
PING_INTERVAL = 0.2  # aiohttp drops a peer that answers no ping within about half an interval more
SLACK = 0.05  # client-side timing measured after the server started its clock
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
SETTINGS = {
    "agents": {
        "register_timeout": REGISTER_TIMEOUT,
        "violation_close_delay": VIOLATION_CLOSE_DELAY,
        "pending_timeout": 30,
    }
}
# Only for the heartbeat test: a client answers pings only while it reads, and most tests' workers do not.
HEARTBEAT_SETTINGS = {"agents": {**SETTINGS["agents"], "ping_interval": PING_INTERVAL}}

ClientFor = Callable[[AppServer], Client]


async def gone(server: AppServer, worker_id: str) -> None:
    """Wait until the engine and the hub no longer know `worker_id`."""
    await eventually(
        lambda: worker_id not in server.engine.workers and worker_id not in server.hub.sessions,
        f"worker {worker_id} to leave the engine",
        DEADLINE,
        poll=0.01,
    )


# Protocol violations close only the offending connection, with 1008, after the configured delay; the
# offender leaves the engine at once, so nothing is offered to it while it waits to be closed.


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
async def test_violation_closes_only_the_offending_connection(
    start_app: StartApp, client_for: ClientFor, case: Violation
) -> None:
    server = await start_app(SETTINGS)
    client = client_for(server)
    name = unique("violation")
    good = await client.worker(name)
    bad = await client.open()
    if case.registers_first:
        await bad.register(name)
        assert sorted(server.workers_named(name)) == sorted([good.id, bad.id])
    started = time.monotonic()
    await case.act(bad, name)
    if case.registers_first:
        await gone(server, bad.id)  # well before the close: the delay only slows a reconnect loop down

    # Dispatched while the offender may still wait for its close: the well-behaved worker gets the job.
    room = unique("room")
    dispatch = await client.create_dispatch(room, name)
    assert only_job(dispatch)["state"]["worker_id"] == good.id, "offered at once to the remaining worker"
    code, seen = await bad.until_closed(within=case.min_delay + DEADLINE)
    elapsed = time.monotonic() - started
    assert code == case.code
    assert elapsed >= case.min_delay - SLACK, f"closed after {elapsed:.3f}s, before the configured delay"
    assert seen == [], f"the violating worker got {seen} before the close"
    assert server.workers_named(name) == [good.id]
    offer = await good.expect("availability")
    assert offer.job.dispatch_id == dispatch["id"]
    assert server.engine.jobs[offer.job.id].worker_id == good.id
    await good.send(ping(7))
    assert (await good.expect("pong")).last_timestamp == 7


# The heartbeat


async def test_a_worker_that_stops_answering_pings_is_dropped_as_a_lost_connection(
    start_app: StartApp, client_for: ClientFor
) -> None:
    """The server's heartbeat (agents.ping_interval) drops a silent peer: a lost connection, not a protocol
    violation (no 1008 close, no violation delay); a peer that answers stays."""
    server = await start_app(HEARTBEAT_SETTINGS)
    client = client_for(server)
    name = unique("silent")
    lively = await client.worker(name)
    listening = asyncio.create_task(lively.expect_silence(60))  # reading answers the server's pings
    ws = await client.session.ws_connect(
        f"{server.ws_url}/agent",
        headers={"Authorization": f"Bearer {server.token(agent=True)}"},
        autoping=False,
    )
    client.sockets.append(ws)
    silent = await Worker(ws).register(name)
    assert sorted(server.workers_named(name)) == sorted([lively.id, silent.id])

    # Nothing is read from the silent socket from now on, so no ping is answered.
    await gone(server, silent.id)
    assert server.workers_named(name) == [lively.id] and not listening.done()
    code, _ = await silent.until_closed()
    assert code != POLICY_VIOLATION
    listening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listening
    await lively.send(ping(3))
    assert (await lively.expect("pong")).last_timestamp == 3


# Connection churn


async def test_a_thousand_connect_register_close_cycles_leave_no_worker_behind(
    start_app: StartApp, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="switchboard")
    server = await start_app(SETTINGS)
    client = client_for(server)
    name = unique("churn")
    headers = {"Authorization": f"Bearer {server.token(agent=True)}"}
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
    assert time.monotonic() - started < 30
    assert registered == 500
    await eventually(lambda: not server.workers_named(name), "every churned worker to leave the engine")
    assert not server.hub.sessions

    # A new worker of the same agent is the only one, and gets the next job at once.
    normal = await client.worker(name)
    assert server.workers_named(name) == [normal.id]
    room = unique("room")
    dispatch = await client.create_dispatch(room, name)
    assert only_job(dispatch)["state"]["worker_id"] == normal.id
    assert (await normal.expect("availability")).job.dispatch_id == dispatch["id"]
    async with client.session.get(server.http_url + "/") as response:
        assert response.status == 200 and await response.text() == "OK"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []
