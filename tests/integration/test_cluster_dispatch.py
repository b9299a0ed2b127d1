"""Dispatch across nodes: real livekit-agents workers connected to one node take jobs for rooms of
another, on three switchboard processes sharing one real redis-server.

Each room here lives on the node its participant joined or its dispatch was created on (node B); the
workers are started on the other nodes' `/agent`. The job joins the room on B: the owner sends its own URL
in the JobAssignment, which livekit-agents connects to instead of its worker's URL."""

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from livekit import api, rtc

from tests.agent_workers import AgentWorker, eventually, registered
from tests.cluster_nodes import AGENTS, Cluster, cli, kill_node, place_rooms_on, start_cluster, stop_cluster
from tests.conftest import Server, unique
from tests.signal_proxy import SignalProxy, ThroughProxy
from tests.tone import publish_tone


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes A, B (the rooms' node: A and C are drained, so every new room goes to B) and C (killed by the
    last tests, C then B)."""
    instance = start_cluster(tmp_path_factory.mktemp("cluster"), 3, {"agents": AGENTS})
    place_rooms_on(instance, instance.nodes[1])
    yield instance
    stop_cluster(instance)


@pytest.fixture
async def api_b(cluster: Cluster) -> AsyncIterator[api.LiveKitAPI]:
    node = cluster.nodes[1]
    async with api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) as client:
        yield client


async def dispatch_on(lkapi: api.LiveKitAPI, agent_name: str, room: str) -> tuple[str, api.AgentDispatch]:
    """CreateDispatch of `agent_name` to `room`, on the node `lkapi` talks to (the room's node)."""
    request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
    return room, await lkapi.agent_dispatch.create_dispatch(request)


def worker_ids(node: Server, agent_name: str) -> list[str]:
    """The ids of the workers registered on `node`'s own /agent, from its log."""
    pattern = rf"worker registered worker=(AW_\S+) agent_name='{re.escape(agent_name)}'"
    return re.findall(pattern, node.log())


def remote_workers(node: Server, agent_name: str) -> int:
    """How many workers of `agent_name` connected to other nodes `node` came to hold, from its log."""
    pattern = rf"remote worker registered worker=AW_\S+ node=\S+ agent_name='{re.escape(agent_name)}'"
    return len(re.findall(pattern, node.log()))


async def worker_on(
    node: Server, owner: Server, agent_workers: Any, agent_name: str, behaviour: str
) -> AgentWorker:
    """A worker started on `node`, once registered there and known to `owner`, the rooms' node."""
    local, remote = len(worker_ids(node, agent_name)), remote_workers(owner, agent_name)
    worker: AgentWorker = agent_workers(node, agent_name, behaviour)
    await registered(node, agent_name, local + 1)
    if node is not owner:
        await eventually(lambda: remote_workers(owner, agent_name) > remote, f"{agent_name} known to B")
    return worker


def lost_nodes(node: Server) -> list[str]:
    """The nodes `node` found lost, in order, from its log."""
    return re.findall(r"node lost node=(\S+)", node.log())


async def last_job(lkapi: api.LiveKitAPI, room: str, dispatch_id: str, status: int) -> api.Job | None:
    dispatch = await lkapi.agent_dispatch.get_dispatch(dispatch_id, room)
    job = dispatch.state.jobs[-1] if dispatch and dispatch.state.jobs else None
    return job if job is not None and job.state.status == status else None


async def test_a_worker_on_another_node_joins_the_room_and_hears_its_participant(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    listener = await worker_on(a, b, agent_workers, "far-listener", "listen")
    room_name = unique("far")
    speaker = rtc.Room()
    await speaker.connect(b.ws_url, b.join_token(room_name, "speaker"))
    try:
        _, player = await publish_tone(speaker)
        _, dispatch = await dispatch_on(api_b, "far-listener", room_name)
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


async def test_a_burst_goes_to_the_rooms_node_worker_first_and_spills_over_to_another_nodes(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """The room's node's own worker first (no hop, no cross-node messages); the idle worker of node A is
    asked only when B's cannot take a job now: it refused (test_a_refusal_…), or it is still answering
    another offer of the burst (one question per worker at a time), so A's takes part of the burst."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    far = await worker_on(a, b, agent_workers, "burst", "shutdown")
    near = await worker_on(b, b, agent_workers, "burst", "shutdown")
    created = await asyncio.gather(*(dispatch_on(api_b, "burst", unique("burst")) for _ in range(6)))
    for room, dispatch in created:
        await eventually(
            lambda r=room, d=dispatch.id: last_job(api_b, r, d, api.JS_SUCCESS), f"{room}'s job done"
        )
    near_jobs, far_jobs = near.jobs(), far.jobs()
    assert len(near_jobs) + len(far_jobs) == 6 and not near_jobs.keys() & far_jobs.keys()
    assert near_jobs, "the room's node's own worker took part of the burst"


async def test_a_refusal_on_the_rooms_node_sends_the_job_to_another_nodes_worker(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    picky = await worker_on(b, b, agent_workers, "choosy", "reject")
    willing = await worker_on(a, b, agent_workers, "choosy", "shutdown")
    room, dispatch = await dispatch_on(api_b, "choosy", unique("refused"))
    [record] = (await eventually(willing.jobs, "the job on node A's worker")).values()
    # Both workers were idle and equally loaded: the room's node asked its own worker first.
    assert picky.refused() == {record["job_id"]}
    done = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_SUCCESS), "job success")
    assert done.state.worker_id == record["worker_id"] != ""


def drained_on(node: Server, worker_id: str) -> bool | None:
    """Whether `node` holds `worker_id` drained (None: not listed there), from `switchboard worker list`."""
    result = cli(node, "worker", "list", "--json")
    assert result.returncode == 0, result.stderr
    workers = {w["id"]: w for w in json.loads(result.stdout)}
    return workers[worker_id].get("draining", False) if worker_id in workers else None


async def test_a_worker_drained_through_another_node_is_drained_on_every_node(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Asked of B (the rooms' node, not the worker's), the drain reaches A (its node), which tells every
    node: no room's node offers it a job. Undrained through A, B's pending job goes to it."""
    a, b, c = cluster.nodes
    await worker_on(a, b, agent_workers, "drainee", "shutdown")
    [worker_id] = worker_ids(a, "drainee")
    assert cli(b, "worker", "drain", worker_id).returncode == 0
    for node in (a, b, c):
        await eventually(lambda n=node: drained_on(n, worker_id), f"the worker drained on {node.http_url}")
    room, dispatch = await dispatch_on(api_b, "drainee", unique("drained"))
    explained = await eventually(
        lambda: cli(b, "dispatch", "explain", "--room", room, "--id", dispatch.id).stdout,
        "an explanation naming the drain",
        accept=lambda text: "drained by an operator" in text,
    )
    assert worker_id in explained
    assert (await last_job(api_b, room, dispatch.id, api.JS_PENDING)) is not None
    assert cli(a, "worker", "undrain", worker_id).returncode == 0
    await eventually(
        lambda: last_job(api_b, room, dispatch.id, api.JS_SUCCESS), "the job done once undrained"
    )


async def running_through(
    proxy: SignalProxy, a: Server, agent_workers: Any, api_b: api.LiveKitAPI, agent_name: str, behaviour: str
) -> tuple[AgentWorker, str, api.AgentDispatch, dict[str, Any]]:
    """A worker reaching node A through `proxy`, running the job of a new room on B: (the worker, the room,
    its dispatch, the job's record)."""
    worker = agent_workers(ThroughProxy(a, proxy), agent_name, behaviour)
    await registered(a, agent_name)
    room, dispatch = await dispatch_on(api_b, agent_name, unique(agent_name))
    [record] = (await eventually(worker.jobs, "the job on the worker, through node A")).values()
    await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_RUNNING), "running")
    return worker, room, dispatch, record


async def test_a_worker_that_reconnects_to_another_node_keeps_its_job_there(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """The worker reaches node A through a proxy, which then sends it to node C and cuts it: the worker
    registers on C and lists its running job (migrate_job), which B, its owner, takes back for it. The
    job's agent, in the room on B, never noticed; B's messages about the job reach the worker on C, and
    the worker's reports about it reach B."""
    a, b, c = cluster.nodes
    async with SignalProxy.to(a) as proxy:
        mover, room, dispatch, record = await running_through(proxy, a, agent_workers, api_b, "mover", "stay")

        proxy.upstream_port = int(c.http_url.rsplit(":", 1)[1])
        proxy.cut()
        await registered(c, "mover")
        [moved_to] = worker_ids(c, "mover")
        moved = await eventually(
            lambda: last_job(api_b, room, dispatch.id, api.JS_RUNNING),
            "the job taken back for the worker on node C",
            accept=lambda job: job is not None and job.state.worker_id == moved_to,
        )
        assert moved.id == record["job_id"]
        listed = await api_b.agent_dispatch.get_dispatch(dispatch.id, room)
        assert listed is not None and len(listed.state.jobs) == 1, "the same attempt, not a restart"

        # DeleteDispatch on B: the termination goes to the worker on C, and its report back to B.
        deleted = await api_b.agent_dispatch.delete_dispatch(dispatch.id, room)
        assert deleted.state.jobs[-1].state.error == "terminated: dispatch deleted"
        await eventually(lambda: mover.ended(record["job_id"]), "the job's shutdown on the worker")
        late_report = f"update for a job not held worker={moved_to} job={record['job_id']}"
        await eventually(lambda: late_report in b.log(), "the worker's report of its end, on B")


async def test_dispatch_across_nodes_works_again_once_redis_is_back(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Redis stopped until the nodes lost their leases, then started again (its data kept): the nodes read
    their streams on from where they were, and a worker of node A takes a job of node B's room."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    patient = await worker_on(a, b, agent_workers, "patient", "shutdown")
    regained = [node.log().count("node lease regained") for node in (a, b)]
    cluster.redis.stop()
    try:
        for node in (a, b):
            await eventually(lambda n=node: "node lease lost" in n.log(), "a lease lost")
    finally:
        cluster.redis.start()
    for node, before in zip((a, b), regained, strict=True):
        await eventually(lambda n=node, c=before: n.log().count("node lease regained") > c, "lease regained")
    room, dispatch = await dispatch_on(api_b, "patient", unique("after-outage"))
    [record] = (await eventually(patient.jobs, "the job on node A's worker")).values()
    done = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_SUCCESS), "job success")
    assert done.state.worker_id == record["worker_id"]


async def test_a_node_found_lost_that_comes_back_announces_its_workers_again(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Node A stalls (SIGSTOP) past its lease: node B finds it lost and drops its workers. A resumes,
    finds its own lease lost then regained, and announces its workers again (still connected to it)."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    stalled = await worker_on(a, b, agent_workers, "stalled", "shutdown")
    lost_before, regained_before = len(lost_nodes(b)), a.log().count("node lease regained")
    a.process.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: len(lost_nodes(b)) > lost_before, "node A found lost by B")
    finally:
        a.process.send_signal(signal.SIGCONT)
    await eventually(lambda: a.log().count("node lease regained") > regained_before, "A's lease regained")
    room, dispatch = await dispatch_on(api_b, "stalled", unique("stalled"))
    [record] = (await eventually(stalled.jobs, "the job on node A's worker")).values()
    assert worker_ids(a, "stalled") == [record["worker_id"]], "the same registration, announced again"
    done = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_SUCCESS), "job success")
    assert done.state.worker_id == record["worker_id"]


async def test_the_job_of_a_killed_nodes_worker_runs_again_on_another_node(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Node C is killed (the next test then kills B)."""
    a, b, c = cluster.nodes
    doomed = await worker_on(c, b, agent_workers, "sturdy", "stay")
    room, dispatch = await dispatch_on(api_b, "sturdy", unique("node-lost"))
    [record] = (await eventually(doomed.jobs, "the job on node C's worker")).values()
    running = await eventually(lambda: last_job(api_b, room, dispatch.id, api.JS_RUNNING), "running")
    assert running.state.worker_id == record["worker_id"] in worker_ids(c, "sturdy")
    standby = await worker_on(a, b, agent_workers, "sturdy", "stay")

    async def agents() -> list[str]:
        listed = await api_b.room.list_participants(api.ListParticipantsRequest(room=room))
        return [p.sid for p in listed.participants if p.kind == api.ParticipantInfo.Kind.AGENT]

    [old_agent] = await eventually(agents, "the agent in the room", accept=lambda sids: len(sids) == 1)
    lost_before = len(lost_nodes(b))
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
    [lost] = lost_nodes(b)[lost_before:]
    assert first.state.error == f"worker {record['worker_id']}'s node {lost} was lost", "why it moved"
    # The first copy's agent (its worker cut off with node C, the agent still in the room) is gone.
    await eventually(
        agents,
        "only the new attempt's agent in the room",
        accept=lambda sids: bool(sids) and old_agent not in sids,
    )
    assert len(await agents()) == 1


async def test_a_job_that_no_live_node_claims_is_stopped_on_its_worker(
    cluster: Cluster, agent_workers: Any, api_b: api.LiveKitAPI
) -> None:
    """Last in the module: B is killed (C is already gone). The job of a room on B runs on a worker that
    reaches A through a proxy; B dies, then the worker's connection is cut: it registers on A again and
    lists its job (migrate_job), which no live node claims, as no node holds its room. A stops the job on
    the worker, so that it does not run twice once the room comes back and runs it again."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    async with SignalProxy.to(a) as proxy:
        orphan, _, _, record = await running_through(proxy, a, agent_workers, api_b, "orphan", "hang")

        kill_node(b)
        proxy.cut()
        await registered(a, "orphan", 2)
        [_, again] = worker_ids(a, "orphan")
        await eventually(lambda: orphan.ended(record["job_id"]), "the unclaimed job stopped on the worker")
        assert f"job stopped: no live node claimed it worker={again} job={record['job_id']}" in a.log()
        assert orphan.process.poll() is None, "the worker goes on"
