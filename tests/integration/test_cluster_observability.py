"""Webhooks, metrics and the dashboard of a cluster: three switchboard processes sharing one real
redis-server, every node with the same `webhook:` section and its own `prometheus_port`.

Every room here lives on node B (A and C are drained, so new rooms go to B); participants join through
A, which relays their signalling to B; the real livekit-agents worker is connected to C. So every event
has three nodes that could tell it: the test checks that B alone does, once, in order (verified by the
official Python WebhookReceiver), that each node's metrics count what that node holds, and that the
dashboard served by A shows the nodes, B's room with its agent from C, and deletes its dispatch."""

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent, models
from prometheus_client.parser import text_string_to_metric_families

from switchboard.api import switchboard_proto as pb
from switchboard.cluster.forwarding import FORWARDED
from tests.cluster_nodes import Cluster, place_rooms_on, start_cluster, start_node, stop_cluster
from tests.conftest import Server, free_port, unique
from tests.dashboard_browser import dashboard_scenario, observations
from tests.integration.test_cluster_dispatch import worker_on
from tests.integration.test_webhooks import FAST_RETRIES, Receiver
from tests.integration.test_workers_registry import call, list_workers
from tests.polling import eventually

PENDING_TIMEOUT = 2
AGENTS = {"pending_timeout": PENDING_TIMEOUT, "availability_timeout": 3, "start_timeout": 20}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Node:
    """A node of the cluster and where its metrics are served."""

    def __init__(self, server: Server, metrics_port: int) -> None:
        self.server = server
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="module")
def hook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hook_port: int) -> Iterator[tuple[Cluster, list[Node]]]:
    directory = tmp_path_factory.mktemp("cluster")
    hook = {"api_key": "testkey", "urls": [f"http://127.0.0.1:{hook_port}/hook"], **FAST_RETRIES}
    instance = start_cluster(directory, 0)
    nodes: list[Node] = []
    try:
        for index in range(3):
            port = free_port()
            config = {"webhook": hook, "prometheus_port": port, "agents": AGENTS}
            server = start_node(directory / f"node{index}", instance.redis, config)
            instance.nodes.append(server)
            nodes.append(Node(server, port))
        place_rooms_on(instance, instance.nodes[1])
        yield instance, nodes
    finally:
        stop_cluster(instance)


@pytest.fixture
async def receiver(hook_port: int) -> AsyncIterator[Receiver]:
    instance = Receiver(hook_port)
    await instance.start()
    yield instance
    await instance.stop()


def webhook_posts(server: Server) -> int:
    """The webhook posts a node made (delivered or failed), from its log."""
    return len(re.findall(r"webhook (?:sent|post failed) ", server.log()))


async def next_events(
    receiver: Receiver, server: Server, room: str, told: list[Any], names: list[str]
) -> list[Any]:
    """Once exactly the events `names` (in any order) of `room` arrived after those already `told`: the new
    ones, in the order they were received (added to `told`)."""

    async def arrived() -> list[Any] | None:
        events = receiver.of_room(server, room)[len(told) :]
        return events if len(events) >= len(names) else None

    events: list[Any] = await eventually(arrived, f"events {names} of room {room}", 20)
    assert sorted(e.event for e in events) == sorted(names), [e.event for e in events]
    told.extend(events)
    return events


async def test_every_event_is_sent_once_by_the_rooms_node_in_order(
    cluster: tuple[Cluster, list[Node]], receiver: Receiver, agent_workers: Any
) -> None:
    deployment, _ = cluster
    a, b, c = deployment.nodes
    posts_before = {node.http_url: webhook_posts(node) for node in (a, c)}
    await worker_on(c, b, agent_workers, "obs-bot", "stay")
    room = unique("hooked")
    alice = rtc.Room()
    told: list[Any] = []
    async with api.LiveKitAPI(a.http_url, a.api_key, a.api_secret) as through_a:
        # Joined through A, created on B: B tells it. The room's automatic dispatch finds no automatic
        # worker (obs-bot is named) and fails after the pending timeout.
        await alice.connect(a.ws_url, a.join_token(room, "alice"))
        [started, joined, automatic] = await next_events(
            receiver, b, room, told, ["room_started", "participant_joined", "agent_job_ended"]
        )
        assert [started.event, joined.event] == ["room_started", "participant_joined"]
        assert joined.participant.identity == "alice" and automatic.job.agent_name == ""
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await alice.local_participant.publish_track(track, options)
        [published] = await next_events(receiver, b, room, told, ["track_published"])
        await alice.local_participant.unpublish_track(publication.sid)
        [unpublished] = await next_events(receiver, b, room, told, ["track_unpublished"])
        assert published.track.sid == unpublished.track.sid == publication.sid

        # Created through A, run by C's worker, its agent joins on B.
        request = api.CreateAgentDispatchRequest(agent_name="obs-bot", room=room)
        dispatch = await through_a.agent_dispatch.create_dispatch(request)
        ran = await next_events(receiver, b, room, told, ["participant_joined", "agent_job_started"])
        job = next(e.job for e in ran if e.event == "agent_job_started")
        agent_joined = next(e.participant for e in ran if e.event == "participant_joined")
        assert job.dispatch_id == dispatch.id and job.state.status == agent.JS_RUNNING
        assert agent_joined.identity == job.state.participant_identity
        [worker] = await eventually(lambda: list_workers(c, "obs-bot"), "obs-bot listed by C")
        assert job.state.worker_id == worker.id and worker.node_id != ""

        # Nobody serves this agent: its job fails after the pending timeout, told once.
        request = api.CreateAgentDispatchRequest(agent_name="nobody-bot", room=room)
        await through_a.agent_dispatch.create_dispatch(request)
        [failed] = await next_events(receiver, b, room, told, ["agent_job_ended"])
        assert failed.job.agent_name == "nobody-bot" and failed.job.state.status == agent.JS_FAILED
        assert failed.job.state.error.startswith("no worker registered for agent 'nobody-bot'")

        await through_a.room.delete_room(api.DeleteRoomRequest(room=room))
        ended = await next_events(
            receiver,
            b,
            room,
            told,
            ["participant_left", "participant_left", "agent_job_ended", "room_finished"],
        )
        assert ended[-1].event == "room_finished" and ended[-1].room.sid == started.room.sid
    await alice.disconnect()

    events = receiver.of_room(b, room)
    assert [e.id for e in events] == [e.id for e in told] and len({e.id for e in events}) == 12
    # Neither the relaying node (A) nor the worker's node (C) posted anything.
    assert {node.http_url: webhook_posts(node) for node in (a, c)} == posts_before


async def scrape(node: Node) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(node.metrics_url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def dispatches_charted_by(node: Server) -> int:
    """The dispatches of the last hour in `node`'s own charts (asked as another node asks it)."""
    credentials = {"api_key": node.api_key, "api_secret": node.api_secret}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.http_url}/dashboard/login", json=credentials) as response:
            token = (await response.json())["token"]
        headers = {"Authorization": f"Bearer {token}", FORWARDED: "test"}
        async with session.get(f"{node.http_url}/dashboard/activity", headers=headers) as response:
            assert response.status == 200
            return sum(minute["dispatches"] for minute in (await response.json())["minutes"])


async def list_nodes(node: Server) -> list[Any]:
    reply = await call(
        node, "NodeService", "ListNodes", pb.ListNodesRequest(), pb.ListNodesResponse, room_list=True
    )
    return list(reply.nodes)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


async def test_each_node_counts_what_it_holds_and_sees_the_others(
    cluster: tuple[Cluster, list[Node]], agent_workers: Any
) -> None:
    deployment, nodes = cluster
    a, b, c = deployment.nodes
    await worker_on(c, b, agent_workers, "counted-bot", "stay")
    room = unique("counted")
    alice = rtc.Room()
    async with api.LiveKitAPI(a.http_url, a.api_key, a.api_secret) as through_a:
        await alice.connect(a.ws_url, a.join_token(room, "alice"))
        request = api.CreateAgentDispatchRequest(agent_name="counted-bot", room=room)
        await through_a.agent_dispatch.create_dispatch(request)

        async def agent_in_room() -> bool:
            listed = await through_a.room.list_participants(api.ListParticipantsRequest(room=room))
            return any(p.kind == models.ParticipantInfo.AGENT for p in listed.participants)

        await eventually(agent_in_room, "the agent in the room")
        scraped = [await scrape(node) for node in nodes]

        # An API call is counted once, on the node its client reached, with the room's node's answer.
        refused = (("code", "not_found"), ("method", "RoomService.UpdateParticipant"))
        before = [series(await scrape(node), "switchboard_twirp_requests_total") for node in nodes[:2]]
        with pytest.raises(api.TwirpError) as missing:
            await through_a.room.update_participant(
                api.UpdateParticipantRequest(room=room, identity="nobody", metadata="m")
            )
        assert missing.value.code == "not_found"
        after = [series(await scrape(node), "switchboard_twirp_requests_total") for node in nodes[:2]]
        await through_a.room.delete_room(api.DeleteRoomRequest(room=room))
    await alice.disconnect()
    counted = [now.get(refused, 0) - then.get(refused, 0) for then, now in zip(before, after, strict=True)]
    assert counted == [1, 0], "counted by A, which B answered"

    ids = set()
    for node, samples in zip(deployment.nodes, scraped, strict=True):
        [(labels, one)] = series(samples, "switchboard_node_info").items()
        info = dict(labels)
        assert one == 1 and info["address"] == node.http_url and info["node_id"].startswith("ND_")
        ids.add(info["node_id"])
        # Every node sees the three; A and C are drained.
        assert series(samples, "switchboard_cluster_nodes") == {
            (("state", "serving"),): 1.0,
            (("state", "draining"),): 2.0,
        }
    assert len(ids) == 3
    scraped_a, scraped_b, scraped_c = scraped
    # The worker is C's alone: B holds it too (to offer it B's jobs) but does not count it.
    workers = {"counted-bot": 0.0, "obs-bot": 0.0}
    for samples in scraped:
        for labels, count in series(samples, "switchboard_workers").items():
            if dict(labels)["agent_name"] in workers:
                workers[dict(labels)["agent_name"]] += count
    assert workers["counted-bot"] == 1.0
    assert (
        series(scraped_c, "switchboard_workers")[(("agent_name", "counted-bot"), ("status", "available"))]
        == 1
    )
    assert not [labels for labels in series(scraped_b, "switchboard_workers") if "counted-bot" in str(labels)]
    # The room, its participants and its job are B's; A only relayed alice's signalling.
    for samples, rooms in ((scraped_a, 0), (scraped_b, 1), (scraped_c, 0)):
        assert series(samples, "switchboard_rooms") == {(): float(rooms)}
    assert series(scraped_b, "switchboard_participants") == {
        (("kind", "agent"),): 1.0,
        (("kind", "standard"),): 1.0,
    }
    assert series(scraped_a, "switchboard_participants") == {}
    assert series(scraped_b, "switchboard_jobs")[(("status", "running"),)] == 1
    assert series(scraped_c, "switchboard_jobs")[(("status", "running"),)] == 0


async def test_the_dashboard_of_one_node_shows_every_node_and_acts_on_anothers_room(
    cluster: tuple[Cluster, list[Node]], agent_workers: Any, tmp_path: Path
) -> None:
    deployment, _ = cluster
    a, b, c = deployment.nodes
    await worker_on(c, b, agent_workers, "dash-bot", "stay")
    [worker] = await eventually(lambda: list_workers(c, "dash-bot"), "dash-bot listed by C")
    room = unique("dashed")
    settings = {
        "ROOM": room,
        "AGENT": "dash-bot",
        "WORKER_ID": worker.id,
        "SCREENSHOT": str(tmp_path / "d.png"),
        "NODES": "3",
    }
    async with (
        dashboard_scenario(a, "cluster", settings) as browser,
        api.LiveKitAPI(a.http_url, a.api_key, a.api_secret) as through_a,
    ):
        # After the page showed its first state: the room, placed on B, and its agent must appear live.
        await through_a.room.create_room(api.CreateRoomRequest(name=room))
        request = api.CreateAgentDispatchRequest(agent_name="dash-bot", room=room)
        dispatch = await through_a.agent_dispatch.create_dispatch(request)
        result = await observations(a, browser)
        charted = [await dispatches_charted_by(node) for node in deployment.nodes]
        left = await through_a.agent_dispatch.list_dispatch(room)
        await through_a.room.delete_room(api.DeleteRoomRequest(room=room))

    node_ids = {}
    for node in deployment.nodes:
        [info] = [n for n in await list_nodes(a) if n.address == node.http_url]
        node_ids[node.http_url] = info.id
    shown = {row["id"]: row for row in result["nodes"]}
    assert set(shown) == set(node_ids.values())
    for node in (a, b, c):
        row = shown[node_ids[node.http_url]]
        assert row["address"] == node.http_url
        assert row["state"] == ("serving" if node is b else "draining")
    assert shown[node_ids[a.http_url]]["label"].endswith("(this page)")
    latency = result["latencyMs"]["agentJoined"]
    print(f"dashboard on A, room on B: agent joined, event to screen {latency} ms")
    assert 0 <= latency < 5000
    assert result["agentJob"] == f"running on {worker.id}"
    assert result["workerNode"] == node_ids[c.http_url]
    assert result["workerJobs"] == f"{room}: running"
    assert result["deletedDispatch"] == dispatch.id
    # Deleted from A's page, gone on B; what is left is the room's own automatic dispatch.
    assert [d.agent_name for d in left] == [""] and dispatch.id not in [d.id for d in left]
    assert result["errorShown"] == ""
    # The charts of A's page add up every node's last hour: B's dispatches (A, drained, made none).
    assert charted[0] == 0 and charted[1] >= 2 and result["dispatchesCharted"] == sum(charted)


async def test_the_dashboards_own_reads_answer_for_another_nodes_room_and_worker(
    cluster: tuple[Cluster, list[Node]], agent_workers: Any
) -> None:
    deployment, _ = cluster
    a, b, c = deployment.nodes
    await worker_on(c, b, agent_workers, "steered-bot", "stay")
    [worker] = await eventually(lambda: list_workers(c, "steered-bot"), "steered-bot listed by C")
    room = unique("read")
    async with api.LiveKitAPI(a.http_url, a.api_key, a.api_secret) as through_a:
        request = api.CreateAgentDispatchRequest(agent_name="nobody-bot", room=room)
        dispatch = await through_a.agent_dispatch.create_dispatch(request)  # placed on B
        [c_info] = [n for n in await list_nodes(a) if n.address == c.http_url]
        credentials = {"api_key": a.api_key, "api_secret": a.api_secret}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{a.http_url}/dashboard/login", json=credentials) as response:
                login = await response.json()
            session_headers = {"Authorization": f"Bearer {login['token']}"}

            async def ask(
                method: str, path: str, headers: dict[str, str], body: Any = None
            ) -> tuple[int, Any]:
                async with session.request(method, a.http_url + path, headers=headers, json=body) as response:
                    return response.status, await response.json()

            # The room's jobs and timelines, from B, through A.
            status, detail = await ask("GET", f"/dashboard/room?room={room}", session_headers)
            assert status == 200 and detail["room"] == room
            [job] = [job for job in detail["jobs"] if job["dispatch_id"] == dispatch.id]
            assert job["events"][0]["what"] == "dispatch created" and len(detail["jobs"]) == 2  # + automatic
            assert await ask("GET", "/dashboard/room?room=nowhere", session_headers) == (
                404,
                {"error": "requested room does not exist"},
            )

            # A worker of C drained through A's page path, on C: C says so.
            steer = f"/dashboard/node/{c_info.id}/twirp/switchboard.WorkerService/"
            json_headers = session_headers | {"Content-Type": "application/json"}
            status, drained = await ask("POST", steer + "DrainWorker", json_headers, {"worker_id": worker.id})
            assert status == 200 and drained["draining"] is True and drained["node_id"] == c_info.id
            [seen_by_c] = await list_workers(c, "steered-bot")
            assert seen_by_c.draining
            status, undrained = await ask(
                "POST", steer + "UndrainWorker", json_headers, {"worker_id": worker.id}
            )
            assert status == 200 and undrained.get("draining", False) is False

            # Refusals: no session, an unknown node, the page's own node (its calls go to /twirp/ directly).
            assert (await ask("POST", steer + "ListWorkers", {"Content-Type": "application/json"}, {}))[
                0
            ] == 401
            for node_id in ("ND_nobody", login["node_id"]):
                path = f"/dashboard/node/{node_id}/twirp/switchboard.WorkerService/ListWorkers"
                assert await ask("POST", path, json_headers, {}) == (
                    404,
                    {"error": f"no other live node has the id {node_id!r}"},
                )
        await through_a.room.delete_room(api.DeleteRoomRequest(room=room))
