"""Dispatch under pressure, with real livekit-agents workers: slow job processes, long queues, stale tokens.

The worker program (tests/agents/worker.py) writes a record for every copy of a job that starts and ends,
with its process id and times, so these tests see exactly how many copies of a job ran and when.
"""

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_job_token
from tests.agent_workers import eventually, registered
from tests.conftest import Server, start_server, stop_server, unique

START_TIMEOUT = 1.0
SETUP_SECONDS = 1.5  # longer than the start timeout: queued jobs start late


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        {
            "agents": {
                "availability_timeout": 3,
                "pending_timeout": 120,
                "start_timeout": START_TIMEOUT,
                "restart_backoff": 0.5,
                "reconnect_grace": 2,
            },
            "logging": {"level": "debug"},
        },
    )
    yield instance
    stop_server(instance)


def most_at_once(copies: list[tuple[float, float | None]]) -> int:
    """The largest number of these (start, end) intervals live at the same moment."""
    edges = sorted([(start, 1) for start, _ in copies] + [(end, -1) for _, end in copies if end is not None])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


async def current_jobs(lkapi: api.LiveKitAPI, room: str, agent_name: str) -> dict[str, api.Job]:
    """Each job of the room's dispatches of `agent_name`, as its current (last listed) attempt."""
    dispatches = await lkapi.agent_dispatch.list_dispatch(room)
    return {job.id: job for d in dispatches if d.agent_name == agent_name for job in d.state.jobs}


async def test_jobs_that_start_after_the_start_timeout_run_once_and_delete_leaves_no_copy(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    """One job process is kept ready and each takes longer to set up than the start timeout: all but the
    first job start late. None may run twice; the late copies are the jobs."""
    worker = workers("slow", "stay", setup_seconds=str(SETUP_SECONDS), idle_processes="1")
    await registered(server, "slow")
    rooms = [unique("slow") for _ in range(4)]
    dispatches = {}
    for room in rooms:
        request = api.CreateRoomRequest(name=room, agents=[api.RoomAgentDispatch(agent_name="slow")])
        await lkapi.room.create_room(request)
        [dispatches[room]] = await lkapi.agent_dispatch.list_dispatch(room)

    async def all_running() -> bool:
        for room in rooms:
            jobs = await current_jobs(lkapi, room, "slow")
            if not jobs or any(job.state.status != api.JS_RUNNING for job in jobs.values()):
                return False
        return True

    await eventually(all_running, "every job running", deadline=60)
    # Reported running at launch, just before the entrypoint writes its record.
    runs = await eventually(lambda: len(worker.runs()) == len(rooms) and worker.runs(), "a record per job")
    assert all(len(copies) == 1 for copies in runs.values()), f"a job ran more than once: {runs}"
    created = {room: d.state.created_at / 1e9 for room, d in dispatches.items()}
    waited = max(copies[0][0] - min(created.values()) for copies in runs.values())
    assert waited > START_TIMEOUT, f"no job started after the start timeout ({waited:.1f}s): nothing tested"

    async def one_agent_in_each_room() -> bool:
        for room in rooms:
            participants = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            agents = [p.identity for p in participants.participants if p.kind == api.ParticipantInfo.AGENT]
            assert len(agents) <= 1, f"{room}: agents {agents}"
            if not agents:
                return False
        return True

    await eventually(one_agent_in_each_room, "each job's agent in its room")

    for room, dispatch in dispatches.items():
        await lkapi.agent_dispatch.delete_dispatch(dispatch.id, room)

    def all_ended() -> bool:
        return all(end is not None for copies in worker.runs().values() for _, end in copies)

    await eventually(all_ended, "every copy shut down after DeleteDispatch")
    for room in rooms:
        participants = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        assert not participants.participants, f"{room} still holds {participants.participants}"
    assert all(most_at_once(copies) == 1 for copies in worker.runs().values())


async def test_a_long_queue_drains_as_fast_as_the_workers_accept(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    """200 jobs wait for an agent that has no worker yet; one worker registers, then a second. No job
    may fail for lack of capacity while a worker that never said it was full is there."""
    room = unique("queue")
    await lkapi.room.create_room(api.CreateRoomRequest(name=room, agents=[]))
    count = 200
    for _ in range(count):
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="late", room=room)
        )
    started_at = time.monotonic()
    first = workers("late", "shutdown", executor="thread")
    await registered(server, "late")
    second = workers("late", "shutdown", executor="thread")

    def done() -> int:
        return len(first.runs()) + len(second.runs())

    await eventually(lambda: done() == count, f"{count} jobs run", deadline=120)
    elapsed = time.monotonic() - started_at
    print(
        f"\n{count} queued jobs ran in {elapsed:.1f}s from the first worker's start ({count / elapsed:.0f}/s)"
    )

    async def all_succeeded() -> dict[str, api.Job] | None:
        jobs = await current_jobs(lkapi, room, "late")
        return jobs if all(job.state.status == api.JS_SUCCESS for job in jobs.values()) else None

    jobs = await eventually(all_succeeded, "every job reported successful")
    assert len(jobs) == count
    copies = {job_id: len(c) for w in (first, second) for job_id, c in w.runs().items()}
    assert sorted(copies.values()) == [1] * count and set(copies) == set(jobs), "each job ran exactly once"
    print(f"first worker: {len(first.runs())} jobs, second: {len(second.runs())} (it registered later)")


async def test_an_agent_token_for_a_job_the_server_does_not_know_cannot_create_a_room(server: Server) -> None:
    """As after a restart: an agent that outlived its job reconnects with the old job's token."""
    room = unique("orphan")
    token = mint_job_token(
        server.api_key,
        server.api_secret,
        room=room,
        job_id="AJ_gone0000000",
        attempt=1,
        agent_name="ghost",
        identity="agent-AJ_gone0000000",
        name="",
        metadata="",
        attributes={},
        permissions=VideoGrant(can_publish=True, can_subscribe=True),
    )
    async with aiohttp.ClientSession() as session:
        validate = f"{server.http_url}/rtc/validate?access_token={token}"
        async with session.get(validate) as response:
            assert response.status == 403
            assert "job AJ_gone0000000 has ended or is not known to this server" in await response.text()
    participant = rtc.Room()
    with pytest.raises(rtc.ConnectError):
        await participant.connect(server.ws_url, token)
    await participant.disconnect()
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert not listed.rooms
