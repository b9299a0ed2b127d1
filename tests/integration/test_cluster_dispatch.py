"""Dispatch across nodes: real livekit-agents workers connected to one node take jobs for rooms of
another, on three switchboard processes sharing one real redis-server.

Each room here lives on the node its participant joined or its dispatch was created on (node B); the
workers are started on the other nodes' `/agent`. The job joins the room on B: the owner sends its own URL
in the JobAssignment, which livekit-agents connects to instead of its worker's URL."""

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api, rtc

from tests.agent_workers import AgentWorker, eventually, registered
from tests.cluster_nodes import Cluster, kill_node, start_cluster, stop_cluster
from tests.conftest import Server
from tests.tone import publish_tone

AGENTS = {
    "availability_timeout": 3,
    "pending_timeout": 60,
    "reconnect_grace": 1,
    "restart_backoff": 0.1,
    "start_timeout": 20,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes A, B (the rooms' node) and C (killed by the last test)."""
    instance = start_cluster(tmp_path_factory.mktemp("cluster"), 3, {"agents": AGENTS})
    yield instance
    stop_cluster(instance)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Start real livekit-agents workers on a chosen node; killed with their jobs when the test ends."""
    started: list[AgentWorker] = []

    def start(node: Server, agent_name: str, behaviour: str) -> AgentWorker:
        worker = AgentWorker(node, tmp_path / f"worker{len(started)}", agent_name, behaviour)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
async def api_b(cluster: Cluster) -> AsyncIterator[api.LiveKitAPI]:
    node = cluster.nodes[1]
    async with api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_ids(node: Server, agent_name: str) -> list[str]:
    """The ids of the workers registered on `node`'s own /agent, from its log."""
    pattern = rf"worker registered worker=(AW_\S+) agent_name='{re.escape(agent_name)}'"
    return re.findall(pattern, node.log())


async def known_remotely(node: Server, agent_name: str, count: int = 1) -> None:
    """`node` holds `count` workers of `agent_name` connected to other nodes."""
    pattern = rf"remote worker registered worker=AW_\S+ node=\S+ agent_name='{re.escape(agent_name)}'"
    await eventually(lambda: len(re.findall(pattern, node.log())) >= count, f"{agent_name} known remotely")


async def last_job(lkapi: api.LiveKitAPI, room: str, dispatch_id: str, status: int) -> api.Job | None:
    dispatch = await lkapi.agent_dispatch.get_dispatch(dispatch_id, room)
    job = dispatch.state.jobs[-1] if dispatch and dispatch.state.jobs else None
    return job if job is not None and job.state.status == status else None


async def test_a_worker_on_another_node_joins_the_room_and_hears_its_participant(
    cluster: Cluster, workers: Any, api_b: api.LiveKitAPI
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    listener = workers(a, "far-listener", "listen")
    await registered(a, "far-listener")
    room_name = unique("far")
    speaker = rtc.Room()
    await speaker.connect(b.ws_url, b.join_token(room_name, "speaker"))
    try:
        _, player = await publish_tone(speaker)
        dispatch = await api_b.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="far-listener", room=room_name)
        )
        [record] = (await eventually(listener.jobs, "the job on the worker of node A")).values()
        assert record["worker_id"] in worker_ids(a, "far-listener")
        assert worker_ids(b, "far-listener") == [], "the worker is connected to node A only"
        [room] = (await api_b.room.list_rooms(api.ListRoomsRequest(names=[room_name]))).rooms
        assert record["room_sid"] == room.sid, "the job is for the room on node B"
        heard_path = listener.records / f"{record['job_id']}.heard"
        heard = json.loads(await eventually(lambda: heard_path.exists() and heard_path.read_text(), "heard"))
        assert heard["participant"] == "speaker" and heard["rms"] > 1000
        done = await eventually(
            lambda: last_job(api_b, room_name, dispatch.id, api.JS_SUCCESS), "the job's success on B"
        )
        assert done.id == record["job_id"] and done.state.worker_id == record["worker_id"]
        player.cancel()
    finally:
        await speaker.disconnect()


async def test_a_burst_of_dispatches_spreads_over_both_nodes_workers(
    cluster: Cluster, workers: Any, api_b: api.LiveKitAPI
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    far, near = workers(a, "burst", "shutdown"), workers(b, "burst", "shutdown")
    await registered(a, "burst")
    await registered(b, "burst")
    await known_remotely(b, "burst")
    rooms = [unique("burst") for _ in range(6)]
    dispatches = await asyncio.gather(
        *(
            api_b.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="burst", room=r))
            for r in rooms
        )
    )
    for room, dispatch in zip(rooms, dispatches, strict=True):
        await eventually(
            lambda r=room, d=dispatch.id: last_job(api_b, r, d, api.JS_SUCCESS), f"{room}'s job done"
        )
    far_jobs, near_jobs = far.jobs(), near.jobs()
    assert len(far_jobs) + len(near_jobs) == 6 and not far_jobs.keys() & near_jobs.keys()
    assert far_jobs and near_jobs, "both nodes' workers took some of the burst"


async def test_a_refusal_on_the_rooms_node_sends_the_job_to_another_nodes_worker(
    cluster: Cluster, workers: Any, api_b: api.LiveKitAPI
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    picky = workers(b, "choosy", "reject")
    await registered(b, "choosy")
    willing = workers(a, "choosy", "shutdown")
    await registered(a, "choosy")
    await known_remotely(b, "choosy")
    room = unique("refused")
    dispatch = await api_b.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="choosy", room=room)
    )
    [record] = (await eventually(willing.jobs, "the job on node A's worker")).values()
    # Both workers were idle and equally loaded: the room's node asked its own worker first.
    assert picky.refused() == {record["job_id"]}
    done = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_SUCCESS), "job success")
    assert done.state.worker_id == record["worker_id"] != ""


async def test_the_job_of_a_killed_nodes_worker_runs_again_on_another_node(
    cluster: Cluster, workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Last in the module: node C is killed."""
    a, b, c = cluster.nodes
    doomed = workers(c, "sturdy", "stay")
    await registered(c, "sturdy")
    await known_remotely(b, "sturdy")
    room = unique("node-lost")
    dispatch = await api_b.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="sturdy", room=room)
    )
    [record] = (await eventually(doomed.jobs, "the job on node C's worker")).values()
    running = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_RUNNING), "running")
    assert running.state.worker_id == record["worker_id"] in worker_ids(c, "sturdy")
    standby = workers(a, "sturdy", "stay")
    await registered(a, "sturdy")
    await known_remotely(b, "sturdy", 2)

    kill_node(c)
    [again] = (await eventually(standby.jobs, "the job on node A's worker")).values()
    assert again["job_id"] == record["job_id"] and again["worker_id"] in worker_ids(a, "sturdy")
    moved = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_RUNNING), "running again")
    assert moved.state.worker_id == again["worker_id"]
    listed = await api_b.agent_dispatch.get_dispatch(dispatch.id, room)
    assert listed is not None
    first, current = listed.state.jobs
    assert first.id == current.id == record["job_id"]
    assert first.state.status == api.JS_FAILED and first.state.worker_id == record["worker_id"]
    [lost] = re.findall(r"node lost node=(\S+)", b.log())
    assert first.state.error == f"worker {record['worker_id']}'s node {lost} was lost", "why it moved"
