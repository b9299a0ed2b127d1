"""Issue 11's end-to-end scenarios on three switchboard processes sharing one real redis-server, with the
official clients only: a real livekit-agents worker, the Python rtc SDK as the participant (its own
reconnection included), and livekit-api for the Twirp calls.

Placement is not forced: each room goes wherever the cluster puts it (fewest rooms), the test reads
where from Redis, and the roles (worker's node, participant's node, the node a call is sent to) are laid
around it; only where a killed node's room comes back is chosen, by draining the other survivor. The node
kill comes last: it leaves two nodes."""

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from livekit import api, rtc

from switchboard.cluster.redis_client import PREFIX
from switchboard.cluster.settings import ClusterSettings
from tests.agent_workers import AgentWorker, registered
from tests.cluster_nodes import AGENTS, Cluster, cli, kill_node, owner_of, start_cluster, stop_cluster
from tests.conftest import Server, unique
from tests.integration.test_cluster_rooms import list_nodes
from tests.polling import DEADLINE, eventually
from tests.tone import publish_tone

LEASE = 3.0
"""The Redis scenario needs Redis away for less than a lease, so that no node lets its rooms go: stopping
and starting redis-server, with the calls checked meanwhile, took 0.1-0.3 s here; a lease of 3 s leaves
room for a loaded machine. Short enough that a killed node is found dead well within the participants'
SDK reconnection (rust-sdks: 10 attempts, 5 s apart)."""
AGENT_BACK = 10.0
"""From the participant's rejoin to the agent hearing it again: a relaunch, a job process, a join (about
2 s here). An agent only taken back once its old copy gave up on the dead node takes 15 s or more."""
UNAVAILABLE_FAST = 1.0  # redis.timeout is 0.5 s
LOUD = 1000  # the agent's measured RMS of the tone (≈5657)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    config = {"cluster": {"lease": LEASE}, "agents": AGENTS, "rtc": {"ice_addresses": ["127.0.0.1"]}}
    instance = start_cluster(tmp_path_factory.mktemp("cluster"), 3, config)
    yield instance
    stop_cluster(instance)


@pytest.fixture
async def clients(cluster: Cluster) -> AsyncIterator[list[api.LiveKitAPI]]:
    """A livekit-api client of each node, in the cluster's order."""
    opened = [api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) for node in cluster.nodes]
    yield opened
    for client in opened:
        await client.aclose()


async def new_room(cluster: Cluster, lkapi: api.LiveKitAPI, prefix: str) -> tuple[str, Server]:
    """CreateRoom of a fresh room; where the cluster placed it."""
    name = unique(prefix)
    await lkapi.room.create_room(api.CreateRoomRequest(name=name))
    _, owner = await owner_of(cluster, name)
    assert owner is not None, f"{name} placed on a live node of the cluster"
    return name, owner


async def room_owned_by(cluster: Cluster, lkapi: api.LiveKitAPI, node: Server) -> str:
    """A room the cluster placed, by its own choice, on `node`: new rooms until one lands there (the
    others stay empty; placement by fewest rooms gets there within a few)."""
    for _ in range(3 * len(cluster.nodes)):
        name, owner = await new_room(cluster, lkapi, "placed")
        if owner is node:
            return name
    pytest.fail(f"no room placed on {node.http_url}")


class Speaker:
    """A participant (Python rtc SDK) playing the tone, and what its SDK told it about its connection."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.events: list[str] = []
        for event in ("reconnecting", "reconnected", "disconnected"):
            self.room.on(event, lambda *_, e=event: self.events.append(e))
        self.player: asyncio.Task[None] | None = None

    async def join(self, node: Server, room: str) -> "Speaker":
        await self.room.connect(node.ws_url, node.join_token(room, "speaker"))
        _, self.player = await publish_tone(self.room)
        return self

    def agents(self) -> list[str]:
        kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        return [p.identity for p in self.room.remote_participants.values() if p.kind == kind]

    async def leave(self) -> None:
        if self.player is not None:
            self.player.cancel()
        await self.room.disconnect()


@dataclass
class Scene:
    """A room, a worker of a fresh agent name (its behaviour from tests/agents/worker.py), a speaker."""

    room: str
    agent_name: str
    worker: AgentWorker
    speaker: Speaker

    async def dispatch(self, lkapi: api.LiveKitAPI) -> tuple[api.AgentDispatch, dict[str, Any]]:
        """CreateDispatch of the agent to the room through `lkapi`; the job, once the worker runs it."""
        known = set(self.worker.jobs())
        request = api.CreateAgentDispatchRequest(agent_name=self.agent_name, room=self.room)
        dispatch = await lkapi.agent_dispatch.create_dispatch(request)
        return dispatch, await self.next_job(known)

    async def next_job(self, known: set[str]) -> dict[str, Any]:
        """The first job the worker runs that is not among `known`."""
        jobs: dict[str, dict[str, Any]] = await eventually(
            self.worker.jobs, "a new job on the worker", accept=lambda jobs: jobs.keys() - known
        )
        [new] = jobs.keys() - known
        return jobs[new]


@contextlib.asynccontextmanager
async def scene(
    agent_workers: Any, room: str, worker_node: Server, behaviour: str, via: Server
) -> AsyncIterator[Scene]:
    """A worker on `worker_node` (registered there) and the speaker, joined through `via`."""
    agent_name = unique(behaviour)
    worker = agent_workers(worker_node, agent_name, behaviour)
    await registered(worker_node, agent_name)
    speaker = await Speaker().join(via, room)
    try:
        yield Scene(room, agent_name, worker, speaker)
    finally:
        await speaker.leave()


def heard(worker: AgentWorker, job_id: str) -> dict[str, Any] | None:
    """What the job's agent measured of the first audio track it received (tests/agents/worker.py)."""
    path = worker.records / f"{job_id}.heard"
    return json.loads(path.read_text()) if path.exists() else None


async def hears(
    worker: AgentWorker, job_id: str, track_sid: str = "", deadline: float = DEADLINE
) -> dict[str, Any]:
    """The agent's measure of the speaker's tone, once taken (of a track other than `track_sid`)."""
    measured = await eventually(
        lambda: heard(worker, job_id),
        f"job {job_id}'s agent to hear the speaker",
        deadline,
        accept=lambda h: h is not None and h["track_sid"] != track_sid,
    )
    assert measured["participant"] == "speaker" and measured["rms"] > LOUD, measured
    return measured


async def job_of(lkapi: api.LiveKitAPI, room: str, dispatch_id: str, status: int) -> api.Job | None:
    """The dispatch's current job (its last attempt), if it has reached `status`."""
    dispatch = await lkapi.agent_dispatch.get_dispatch(dispatch_id, room)
    job = dispatch.state.jobs[-1] if dispatch and dispatch.state.jobs else None
    return job if job is not None and job.state.status == status else None


async def listed_everywhere(
    clients: list[api.LiveKitAPI], room: str, agent_name: str
) -> list[api.AgentDispatch]:
    """ListDispatch of `room` on every node: they all answer the same (the owner's truth). Those of
    `agent_name` (a new room also has its automatic dispatch, agent name "", as in LiveKit)."""
    first, *others = [await client.agent_dispatch.list_dispatch(room) for client in clients]
    for answer in others:
        assert answer == first, "ListDispatch differs between nodes"
    return [dispatch for dispatch in first if dispatch.agent_name == agent_name]


@pytest.mark.parametrize("owner", [0, 1, 2], ids=["room-on-A", "room-on-B", "room-on-C"])
async def test_worker_on_a_participant_via_b_dispatch_to_c(
    cluster: Cluster, clients: list[api.LiveKitAPI], agent_workers: Any, owner: int
) -> None:
    """A worker on node A, the participant joining via node B, CreateDispatch sent to node C: the agent
    joins the room, wherever it lives, and hears the participant; ListDispatch agrees on all nodes."""
    a, b, _ = cluster.nodes
    api_c = clients[2]
    room = await room_owned_by(cluster, api_c, cluster.nodes[owner])
    async with scene(agent_workers, room, a, "listen", b) as it:
        dispatch, record = await it.dispatch(api_c)
        [listed] = (await api_c.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
        assert (record["room"], record["room_sid"]) == (room, listed.sid)
        await hears(it.worker, record["job_id"])
        done = await eventually(lambda: job_of(api_c, room, dispatch.id, api.JS_SUCCESS), "the job's success")
        assert (done.id, done.state.worker_id) == (record["job_id"], record["worker_id"])
        [agreed] = await listed_everywhere(clients, room, it.agent_name)
        assert agreed.id == dispatch.id and [job.id for job in agreed.state.jobs] == [done.id]


async def test_redis_restarted_under_a_running_cross_node_room(
    cluster: Cluster, clients: list[api.LiveKitAPI], agent_workers: Any
) -> None:
    """The room on one node, the worker on another, the participant via the third. Redis stops for less
    than a lease, so no node loses its lease: the room and its agent go on, CreateDispatch answers
    `unavailable` at once on every node; once Redis is back a new dispatch to the room works, and both
    acknowledged dispatches are in Redis and listed alike by every node."""
    room, owner = await new_room(cluster, clients[0], "outage")
    worker_node, via = (node for node in cluster.nodes if node is not owner)
    api_owner, api_via = (clients[cluster.nodes.index(node)] for node in (owner, via))
    async with scene(agent_workers, room, worker_node, "hear", via) as it:
        first, record = await it.dispatch(api_owner)
        await hears(it.worker, record["job_id"])
        running = await eventually(lambda: job_of(api_owner, room, first.id, api.JS_RUNNING), "running")
        leases_lost = [node.log().count("node lease lost") for node in cluster.nodes]

        request = api.CreateAgentDispatchRequest(agent_name=it.agent_name, room=room)
        cluster.redis.stop()
        away = time.monotonic()
        try:
            for client in clients:
                started = time.monotonic()
                with pytest.raises(api.TwirpError) as refused:
                    await client.agent_dispatch.create_dispatch(request)
                assert time.monotonic() - started < UNAVAILABLE_FAST
                assert refused.value.code == "unavailable"
                assert "redis" in refused.value.message.lower() and "unreachable" in refused.value.message
            # The room and its agent go on: the owner answers from memory, nobody was sent away.
            still = await job_of(api_owner, room, first.id, api.JS_RUNNING)
            assert still is not None and still.id == running.id
            participants = await api_owner.room.list_participants(api.ListParticipantsRequest(room=room))
            assert {p.identity for p in participants.participants} == {"speaker", *it.speaker.agents()}
            assert len(it.speaker.agents()) == 1 and it.speaker.events == []
        finally:
            cluster.redis.start()
        assert time.monotonic() - away < LEASE, "Redis was away for less than a lease"
        assert [node.log().count("node lease lost") for node in cluster.nodes] == leases_lost

        async def dispatched() -> api.AgentDispatch | None:
            try:
                return await api_via.agent_dispatch.create_dispatch(request)
            except api.TwirpError as refused:
                assert refused.code == "unavailable", refused
                return None

        second = await eventually(dispatched, "a new dispatch once Redis is back", 15)
        later = await it.next_job({record["job_id"]})
        await hears(it.worker, later["job_id"])
        assert it.speaker.events == [], "the participant never noticed"
        agreed = await listed_everywhere(clients, room, it.agent_name)
        assert sorted(d.id for d in agreed) == sorted((first.id, second.id))
        assert all(len(d.state.jobs) == 1 for d in agreed), "no job restarted"
        store = aioredis.Redis(host="127.0.0.1", port=cluster.redis.port, decode_responses=True)
        try:
            record_of_room = await store.hgetall(f"{PREFIX}store:{room}")
        finally:
            await store.aclose()
        kept = sorted(
            field.removeprefix("dispatch:")
            for field, value in record_of_room.items()
            if field.startswith("dispatch:") and json.loads(value)["agent_name"] == it.agent_name
        )
        assert kept == sorted((first.id, second.id)), "both acknowledged dispatches kept, no refused one"


async def test_a_new_room_stays_on_the_node_called_while_it_has_at_most_the_slack_more_rooms(
    cluster: Cluster, clients: list[api.LiveKitAPI]
) -> None:
    """Placement by fewest rooms with the default `node_selector.room_slack` (10 %, rounded up): rooms
    created one by one through node A stay on A while A has at most that share more rooms than the node
    with the fewest, and go to a node with the fewest otherwise. Checked at each creation against the
    counts placement keeps in Redis."""
    a = cluster.nodes[0]
    ids = {node.address: node.id for node in await list_nodes(a)}
    a_id = ids[a.http_url]
    store = aioredis.Redis(host="127.0.0.1", port=cluster.redis.port, decode_responses=True)
    names, kept, moved = [], 0, 0
    try:
        for _ in range(24):
            counts = await store.hgetall(f"{PREFIX}node_rooms")
            before = {node_id: int(counts.get(node_id, 0)) for node_id in ids.values()}
            fewest = min(before.values())
            stays = before[a_id] <= fewest + math.ceil(fewest * ClusterSettings.room_slack)
            name, _ = await new_room(cluster, clients[0], "slack")
            names.append(name)
            owner_id, _ = await owner_of(cluster, name)
            if stays:
                assert owner_id == a_id, (before, owner_id)
                kept += 1
            else:
                assert owner_id != a_id and before[owner_id] == fewest, (before, owner_id)
                moved += 1
    finally:
        await store.aclose()
        for name in names:
            await clients[0].room.delete_room(api.DeleteRoomRequest(room=name))
    assert kept and moved, "both sides of the rule were exercised"


async def test_kill_of_the_rooms_node_brings_the_room_and_its_agent_back_elsewhere(
    cluster: Cluster, clients: list[api.LiveKitAPI], agent_workers: Any
) -> None:
    """Last in the module: the room's node is killed (-9). The participant, connected through another
    node (its signalling relayed), is brought back by its SDK's own reconnection; the room comes back on
    the worker's node with its dispatch, whose job runs again on the worker, once the old copy is
    stopped, and hears it."""
    room, owner = await new_room(cluster, clients[0], "killed")
    owner_id, _ = await owner_of(cluster, room)
    via, worker_node = (node for node in cluster.nodes if node is not owner)
    api_worker_node = clients[cluster.nodes.index(worker_node)]
    async with scene(agent_workers, room, worker_node, "hear", via) as it:
        dispatch, record = await it.dispatch(api_worker_node)
        before = await hears(it.worker, record["job_id"])
        await eventually(lambda: job_of(api_worker_node, room, dispatch.id, api.JS_RUNNING), "running")

        # The room is to come back on the worker's node (the other one, drained, keeps relaying): the
        # worker ran the job for the dead node, and now takes it from its own node's engine.
        drained = cli(via, "node", "drain")
        assert drained.returncode == 0, drained.stderr
        sid = it.speaker.room.local_participant.sid
        kill_node(owner)
        # The relay to the dead owner closes; the SDK's resume through `via` is refused (503: the owner
        # cannot be reached), so it falls back to full rejoins, every few seconds (rust-sdks rtc_engine:
        # up to 10 attempts, 5 s apart). Each is refused the same way until the owner's lease lapses; the
        # next one claims the room on a live node, which restores it.
        await eventually(
            lambda: it.speaker.events,
            "the SDK to reconnect by itself",
            60,
            accept=lambda events: "reconnected" in events or "disconnected" in events,
        )
        assert "disconnected" not in it.speaker.events, it.speaker.events
        assert it.speaker.room.local_participant.sid != sid, "a full rejoin (a new session), not a resume"
        _, new_owner = await owner_of(cluster, room)
        assert new_owner is worker_node
        # The restored room relaunches the job once the worker reports the old copy stopped, and the
        # worker (connected to a live node) takes it on the first offer: its answer goes to the room's
        # new node, not to the dead one.
        again = await hears(it.worker, record["job_id"], before["track_sid"], AGENT_BACK)
        assert "assignment for job" not in it.worker.log(), "the worker accepted a job never assigned"
        # The old copy (its agent rejoining the dead node only) was stopped, and its end reported,
        # before the job was offered again: never two copies of one job id on the worker.
        copies = sorted(it.worker.runs()[record["job_id"]])
        assert len(copies) == 2, copies
        (_, stopped), (started, _) = copies
        assert stopped is not None and stopped <= started, copies
        assert again["track_sid"] in it.speaker.room.local_participant.track_publications
        alive = [client for client, node in zip(clients, cluster.nodes, strict=True) if node is not owner]
        await eventually(lambda: job_of(alive[0], room, dispatch.id, api.JS_RUNNING), "running again")
        [restored] = await listed_everywhere(alive, room, it.agent_name)
        lost, current = restored.state.jobs
        assert lost.id == current.id == record["job_id"]
        assert lost.state.status == api.JS_FAILED
        assert lost.state.error == f"node lost: node {owner_id}, where the room was, stopped"
        assert current.state.status == api.JS_RUNNING and current.state.worker_id == record["worker_id"]
