"""Persistence and recovery with `redis:`: acknowledged dispatches and their jobs' states survive a node's
`kill -9` and a Redis restart (real redis-server, real switchboard processes, livekit-api, livekit-agents)."""

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from livekit import api, rtc
from livekit.protocol import agent, models

from tests.agent_workers import AgentWorker, registered
from tests.cluster_nodes import LEASE, dead_to_the_others, kill_node, start_node
from tests.conftest import Server, stop_server
from tests.polling import eventually
from tests.redis_server import RedisServer

DISPATCHES = 50
ROOMS = 5
NODE = {"agents": {"restart_backoff": 0.1, "pending_timeout": 120}}
"""Restored jobs go back to their workers at once; no job gives up waiting while a test restarts things."""


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nodes(redis: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """Start nodes on the module's Redis; whichever still runs at the end is stopped."""
    started: list[Server] = []

    def start() -> Server:
        started.append(start_node(tmp_path / f"node{len(started)}", redis, NODE))
        return started[-1]

    yield start
    for node in started:
        if node.process.poll() is None:
            stop_server(node)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Real livekit-agents workers (thread executor: fifty jobs in one process), killed at the end.

    With a runner ready for each job: livekit-agents (1.8.9) given a burst of jobs and fewer ready runners
    sometimes accepts one, fails to find it a runner ("failed to acquire process for job after 3
    attempts") and never tells the server, which then waits `start_timeout` and does not offer that job
    to the same worker again."""
    started: list[AgentWorker] = []

    def start(node: Server, agent_name: str, behaviour: str) -> AgentWorker:
        directory = tmp_path / f"worker{len(started)}"
        ready = str(DISPATCHES)
        started.append(
            AgentWorker(node, directory, agent_name, behaviour, executor="thread", idle_processes=ready)
        )
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


async def dispatches_of(lkapi: api.LiveKitAPI, rooms: list[str]) -> dict[str, Any]:
    found = {}
    for room in rooms:
        for dispatch in await lkapi.agent_dispatch.list_dispatch(room):
            found[dispatch.id] = dispatch
    return found


def current_jobs(dispatches: dict[str, Any]) -> dict[str, Any]:
    """Each dispatch's current job (the last entry: earlier attempts come first, with the job's id)."""
    return {dispatch_id: d.state.jobs[-1] for dispatch_id, d in dispatches.items() if d.state.jobs}


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """livekit-api clients of given nodes, closed at the end."""
    opened: list[api.LiveKitAPI] = []

    async def open_(node: Server) -> api.LiveKitAPI:
        opened.append(api.LiveKitAPI(node.http_url, node.api_key, node.api_secret))
        return opened[-1]

    yield open_
    for lkapi in opened:
        await lkapi.aclose()


async def test_acknowledged_dispatches_survive_a_kill_and_their_jobs_run_again(
    redis: RedisServer, nodes: Any, workers: Any, clients: Any
) -> None:
    first = nodes()
    lkapi = await clients(first)
    rooms = [f"kept-{i}" for i in range(ROOMS)]
    # A job that ends before the kill: it must stay ended.
    quick = workers(first, "quick", "shutdown")
    finished = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room=rooms[0], agent_name="quick")
    )
    await eventually(
        lambda: current_status(lkapi, rooms[0], finished.id),
        "the quick job ended",
        accept=agent.JS_SUCCESS.__eq__,
    )
    quick.kill()
    # Fifty jobs running on a real worker when the node is killed.
    keeper = workers(first, "keeper", "hang")
    created = {}
    for i in range(DISPATCHES):
        dispatch = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room=rooms[i % ROOMS], agent_name="keeper", metadata=f"m{i}")
        )
        created[dispatch.id] = dispatch
    await eventually(
        lambda: not_running(lkapi, rooms), f"{DISPATCHES} jobs running", accept=lambda left: left is None
    )
    # Each room also has its implicit automatic dispatch (no worker for it here): kept as well.
    listed = await dispatches_of(lkapi, rooms)
    before = current_jobs(listed)
    kill_node(first)
    keeper.kill()
    await dead_to_the_others(redis, first)

    second = nodes()
    lkapi = await clients(second)
    found = await dispatches_of(lkapi, rooms)
    assert set(found) == set(listed) and set(created) | {finished.id} < set(found)
    for dispatch_id, dispatch in created.items():
        restored = found[dispatch_id]
        assert (restored.agent_name, restored.metadata, restored.room) == (
            "keeper",
            dispatch.metadata,
            dispatch.room,
        )
        [lost, again] = restored.state.jobs
        assert lost.id == again.id == before[dispatch_id].id
        assert lost.state.status == agent.JS_FAILED and lost.state.error.startswith("node lost: node ND_")
        assert again.state.status == agent.JS_PENDING
    [done] = found[finished.id].state.jobs
    assert done.state.status == agent.JS_SUCCESS

    # Workers of both agents on the new node: every kept job runs again there, the ended one does not.
    quick_again = workers(second, "quick", "shutdown")
    keeper_again = workers(second, "keeper", "hang")
    await registered(second, "quick")
    await eventually(
        lambda: not_running(lkapi, rooms),
        f"{DISPATCHES} jobs running again",
        accept=lambda left: left is None,
    )
    # The worker reports a job running before its entrypoint (which writes the record) has run.
    expected = {before[dispatch_id].id for dispatch_id in created}
    await eventually(lambda: set(keeper_again.jobs()), "every kept job started again", accept=expected.__le__)
    assert set(keeper_again.jobs()) == expected
    assert quick_again.jobs() == {}
    after = await dispatches_of(lkapi, rooms)
    assert after[finished.id].state.jobs[-1].state.status == agent.JS_SUCCESS
    for dispatch_id in created:
        lost, again = after[dispatch_id].state.jobs
        assert lost.state.error.startswith("node lost") and again.state.status == agent.JS_RUNNING


async def test_while_redis_is_down_create_dispatch_is_unavailable_and_nothing_acknowledged_is_lost(
    redis: RedisServer, nodes: Any, clients: Any
) -> None:
    node = nodes()
    lkapi = await clients(node)
    room = "outage"
    for i in range(3):
        await create(lkapi, room, f"before-{i}")
    kept = {d.id: d.metadata for d in await lkapi.agent_dispatch.list_dispatch(room)}  # with the implicit one
    redis.stop()
    for attempt in range(3):
        started = time.monotonic()
        with pytest.raises(api.TwirpError) as refused:
            await create(lkapi, room, f"during-{attempt}")
        assert refused.value.code == "unavailable"
        assert "redis is unreachable" in refused.value.message
        assert time.monotonic() - started < 2.0
    # Rooms already running go on: their dispatches are listed from memory.
    assert {d.id: d.metadata for d in await lkapi.agent_dispatch.list_dispatch(room)} == kept
    redis.start()
    after = await eventually(lambda: create_or_none(lkapi, room, "after"), "CreateDispatch working again")
    kept[after.id] = "after"
    # What was acknowledged is in Redis: a node that replaces this one finds exactly that.
    kill_node(node)
    await dead_to_the_others(redis, node)
    replacement = await clients(nodes())
    # Any call on the room brings it back (here RoomService's: the room exists, nobody is in it yet).
    listed = await replacement.room.list_participants(api.ListParticipantsRequest(room=room))
    assert list(listed.participants) == []
    found = await replacement.agent_dispatch.list_dispatch(room)
    assert {d.id: d.metadata for d in found} == kept


async def create(lkapi: api.LiveKitAPI, room: str, metadata: str) -> Any:
    return await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room=room, agent_name="absent", metadata=metadata)
    )


async def create_or_none(lkapi: api.LiveKitAPI, room: str, metadata: str) -> Any:
    try:
        return await create(lkapi, room, metadata)
    except api.TwirpError as exc:
        assert exc.code == "unavailable"
        return None


async def current_status(lkapi: api.LiveKitAPI, room: str, dispatch_id: str) -> Any:
    dispatch = await lkapi.agent_dispatch.get_dispatch(dispatch_id, room)
    jobs = dispatch.state.jobs if dispatch else []
    return jobs[-1].state.status if jobs else None


async def not_running(lkapi: api.LiveKitAPI, rooms: list[str]) -> list[str] | None:
    """The keeper jobs that do not run (their id, status and reason), or None once all of them run."""
    jobs = [
        job for job in current_jobs(await dispatches_of(lkapi, rooms)).values() if job.agent_name == "keeper"
    ]
    waiting = [
        f"{job.id} {agent.JobStatus.Name(job.state.status)} {job.state.error!r} on {job.state.worker_id!r}"
        for job in jobs
        if job.state.status != agent.JS_RUNNING
    ]
    return None if len(jobs) == DISPATCHES and not waiting else waiting


async def test_a_participant_rejoining_after_its_rooms_node_died_finds_the_room_and_its_agent_again(
    redis: RedisServer, nodes: Any, workers: Any, clients: Any
) -> None:
    first = nodes()
    lkapi = await clients(first)
    room_name = "rejoined"
    workers(first, "stayer", "stay")
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room=room_name, agent_name="stayer", metadata="kept")
    )
    person = rtc.Room()
    await person.connect(first.ws_url, first.join_token(room_name, "person"))
    await eventually(lambda: agents_in(person), "the agent in the room", accept=lambda n: n == 1)
    [job] = (await lkapi.agent_dispatch.get_dispatch(dispatch.id, room_name)).state.jobs
    kill_node(first)
    await person.disconnect()
    await dead_to_the_others(redis, first)

    second = nodes()
    workers(second, "stayer", "stay")
    again = rtc.Room()
    try:
        # The participant's reconnect (here: to the node that replaced the dead one) brings the room back.
        await again.connect(second.ws_url, second.join_token(room_name, "person"))
        await eventually(lambda: agents_in(again), "the agent back in the room", accept=lambda n: n == 1)
    finally:
        await again.disconnect()
    lkapi = await clients(second)
    restored = await lkapi.agent_dispatch.get_dispatch(dispatch.id, room_name)
    assert restored is not None and (restored.agent_name, restored.metadata) == ("stayer", "kept")
    lost, running_again = restored.state.jobs
    assert lost.id == running_again.id == job.id and lost.state.error.startswith("node lost")
    assert running_again.state.status == agent.JS_RUNNING


def agents_in(room: rtc.Room) -> int:
    kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    return sum(1 for p in room.remote_participants.values() if p.kind == kind)


async def test_a_node_does_not_overwrite_the_record_of_a_room_another_live_node_holds(
    redis: RedisServer, nodes: Any, clients: Any
) -> None:
    first = nodes()
    lkapi = await clients(first)
    room = "contested"
    kept = await create(lkapi, room, "first's")
    client = aioredis.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    try:
        alone = await client.smembers("{sb}:nodes")
        nodes()
        now = await eventually(
            lambda: client.smembers("{sb}:nodes"), "the second node", accept=lambda ids: len(ids - alone) == 1
        )
        [second_id] = now - alone
        # As room placement does when the room moves (its first node was cut off past its lease): the
        # room's key names the second node, which is alive.
        await client.set(f"{{sb}}:room:{room}", second_id)
        with pytest.raises(api.TwirpError) as refused:
            await create(lkapi, room, "stale")
        assert refused.value.code == "unavailable" and "held by another node" in refused.value.message
        # Withdrawn here too: the caller was told it does not exist.
        assert sorted(d.metadata for d in await lkapi.agent_dispatch.list_dispatch(room)) == ["", "first's"]
        stored = await client.hgetall(f"{{sb}}:store:{room}")
        metadata = [json.loads(v)["metadata"] for k, v in stored.items() if k.startswith("dispatch:")]
        assert sorted(metadata) == ["", "first's"]  # the implicit automatic dispatch, and the first one
        assert f"dispatch:{kept.id}" in stored
    finally:
        await client.aclose()


async def test_a_redis_that_forgot_the_write_script_still_keeps_every_acknowledged_dispatch(
    redis: RedisServer, nodes: Any, clients: Any
) -> None:
    """The store sends its write script by digest; a Redis that lost it (a restart, a failover, SCRIPT
    FLUSH) answers NOSCRIPT, and the node loads it and writes again before it acknowledges."""
    lkapi = await clients(nodes())
    room = "forgetful"
    before = await create(lkapi, room, "before")
    client = aioredis.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    try:
        assert await client.script_flush()
        after = await create(lkapi, room, "after")
        stored = await client.hgetall(f"{{sb}}:store:{room}")
        assert {f"dispatch:{before.id}", f"dispatch:{after.id}"} <= set(stored)
    finally:
        await client.aclose()


ADOPTED_DEPARTURE = 5
"""The adopted room's departure timeout: its grace before it is adopted, then its time to close; long
enough for its job to start again before it closes (about 2 s here), short for the test."""
ADOPTION_DEADLINE = 30.0
"""From the kill: the lease (1.5 s), the grace, the job's start, then the close."""


async def owner_and_survivor(client: Any, pair: tuple[Server, Server], room: str) -> tuple[Server, Server]:
    """Of two nodes, the one Redis names as `room`'s owner, and the other."""
    owner_id = await client.get(f"{{sb}}:room:{room}")
    url = json.loads(await client.get(f"{{sb}}:node:{owner_id}"))["url"]
    first, second = pair
    return (first, second) if first.http_url == url else (second, first)


async def test_a_lost_nodes_room_that_nobody_comes_back_to_is_adopted_runs_its_job_again_and_closes(
    redis: RedisServer, nodes: Any, workers: Any, clients: Any
) -> None:
    """No participant rejoins and no call names the room after its node is killed: a live node brings it
    back anyway (cluster/adoption.py), once its participants' departure timeout has passed. Its job runs
    again on the worker, then the room closes after its departure timeout, which ends the job and deletes
    the room's record and key from Redis."""
    pair = nodes(), nodes()
    room = "adopted"
    client = aioredis.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    try:
        created = api.CreateRoomRequest(name=room, departure_timeout=ADOPTED_DEPARTURE)
        await (await clients(pair[0])).room.create_room(created)
        owner, survivor = await owner_and_survivor(client, pair, room)
        worker = workers(survivor, "adoptee", "stay")
        await registered(survivor, "adoptee")
        lkapi = await clients(survivor)
        request = api.CreateAgentDispatchRequest(room=room, agent_name="adoptee")
        dispatch = await lkapi.agent_dispatch.create_dispatch(request)
        [job_id] = await eventually(lambda: list(worker.runs()), "the job running")
        # Killed once the agent is in the room (its media connection up): an agent still connecting to the
        # dead node ends only when livekit-agents gives up on its entrypoint (15 s), after the room, which
        # nobody rejoins, has closed (its departure timeout) without running the job again.
        in_room = (await clients(owner)).room.list_participants
        await eventually(
            lambda: in_room(api.ListParticipantsRequest(room=room)),
            "the agent in the room",
            accept=lambda listed: [p.state for p in listed.participants] == [models.ParticipantInfo.ACTIVE],
        )
        killed_at = time.time()
        kill_node(owner)
        # Only Redis and the worker are watched from here: a call naming the room would bring it back.

        def copies() -> list[tuple[float, float | None]]:
            return sorted(worker.runs()[job_id])

        await eventually(copies, "the job started again", ADOPTION_DEADLINE, accept=lambda r: len(r) == 2)
        (_, stopped), (started, _) = copies()
        # Adopted only once its participants' time to come back was over, counted from when the survivor
        # found the node lost (after the kill). The old copy (its agent joined the dead node) had ended or
        # was stopped, and its end was known, before the job was offered again: the
        # worker never ran two copies of the job.
        assert started - killed_at >= ADOPTED_DEPARTURE, started - killed_at
        assert stopped is not None and stopped <= started
        await eventually(lambda: copies()[1][1], "the job ended with the room", ADOPTION_DEADLINE)
        assert worker.ended(job_id)
        await eventually(
            lambda: client.exists(f"{{sb}}:store:{room}", f"{{sb}}:room:{room}"),
            "the room's record and key gone",
            accept=lambda left: left == 0,
        )
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest())
        assert room not in [r.name for r in listed.rooms]
        # The survivor's history of the closed room: both dispatches deleted with it, the agent's job lost
        # with the killed node, then run again and ended by the room's close.
        history = {d.id: d for d in await lkapi.agent_dispatch.list_dispatch(room)}
        assert len(history) == 2 and all(d.state.deleted_at for d in history.values())
        lost, again = history[dispatch.id].state.jobs
        assert lost.id == again.id == job_id
        assert lost.state.error.startswith("node lost: node ND_")
        assert again.state.status == agent.JS_SUCCESS
        assert again.state.error == "terminated: room closed (departure timeout)"
    finally:
        await client.aclose()


async def test_a_room_handed_over_while_redis_was_away_comes_back_once_the_lease_is_regained(
    redis: RedisServer, tmp_path: Path, clients: Any
) -> None:
    """Redis away for longer than the lease: the node hands its room over (closes it here, its record kept
    for whichever node takes it). Once Redis is back and the node's lease regained, its look for rooms
    to adopt, woken by that, brings the room back at once, though no call names it and nobody rejoins:
    the periodic look (an hour apart here) plays no part."""
    config = NODE | {"cluster": {"lease": LEASE, "adopt_interval": 3600}}
    node = start_node(tmp_path / "node", redis, config)
    room = "handed-over"
    try:
        lkapi = await clients(node)
        await lkapi.room.create_room(api.CreateRoomRequest(name=room, departure_timeout=60))
        redis.stop()
        try:
            await eventually(lambda: "node lease lost" in node.log(), "the node to lose its lease", 10)
        finally:
            redis.start()
        await eventually(lambda: f"room adopted room={room} " in node.log(), "the room adopted back", 20)
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))  # restores nothing
        assert [r.name for r in listed.rooms] == [room]
    finally:
        stop_server(node)
