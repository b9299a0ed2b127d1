"""Rooms and signalling across three nodes on one real redis-server: placement, the /rtc relay, Twirp
calls on any node, node listing and draining, and Redis going away and coming back.

The clients are the official ones (Python `livekit` rtc SDK, `livekit-api`, the `switchboard` CLI); each
reaches whichever node the test names, as a user behind a load balancer would."""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis.asyncio as redis
from livekit import api, rtc

from switchboard.api import switchboard_proto as pb
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from tests.cluster_nodes import Cluster, cli, start_cluster, start_node, stop_cluster
from tests.conftest import Server, start_server, stop_server
from tests.polling import eventually
from tests.signal_proxy import SignalProxy
from tests.tone import publish_tone

LEASE = 3.0
"""Longer than the other cluster modules': the Redis test checks audio while Redis is away, within a lease."""
LOUD = 4000  # the tone's RMS is ≈5657
UNAVAILABLE_FAST = 1.0


CONFIG = {
    "cluster": {"lease": LEASE},
    "rtc": {"ice_addresses": ["127.0.0.1"]},
    # Strictly the fewest rooms: the burst's count is exact. The default slack is tested in
    # test_cluster_scenarios.py.
    "node_selector": {"room_slack": 0},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    instance = start_cluster(tmp_path_factory.mktemp("cluster"), 3, CONFIG)
    yield instance
    stop_cluster(instance)


@contextlib.asynccontextmanager
async def lkapi(node: Server) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) as client:
        yield client


async def list_nodes(node: Server) -> list[Any]:
    token = node.token(room_list=True)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            node.http_url + "/twirp/switchboard.NodeService/ListNodes",
            data=pb.ListNodesRequest().SerializeToString(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/protobuf"},
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return list(pb.ListNodesResponse.FromString(await answer.read()).nodes)


async def rooms_by_node(node: Server) -> dict[str, int]:
    return {n.address: n.rooms for n in await list_nodes(node)}


async def handshake(node: Server, token: str) -> tuple[int, str]:
    """What a node answers to the WebSocket upgrade of a `/rtc` join, when it refuses it (status, text)."""
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(node.http_url + "/rtc", params={"access_token": token}, headers=upgrade) as answer,
    ):
        return answer.status, await answer.text()


class Listener:
    """A Python rtc participant playing the tone, and the loudness of every audio frame it receives."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.levels: list[float] = []
        self.tasks: set[asyncio.Future[None]] = set()
        self.reconnects = 0
        self.room.on("track_subscribed", lambda track, *_: self._spawn(self._measure(track)))
        self.room.on("reconnected", lambda *_: self._reconnected())

    def _reconnected(self) -> None:
        self.reconnects += 1

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _measure(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            self.levels.append(float(np.sqrt(np.mean(samples**2))))

    async def join(self, node: Server, room: str, url: str = "") -> "Listener":
        """Join `room` with `node`'s token, through `url` (default: the node's own)."""
        await self.room.connect(url or node.ws_url, node.join_token(room, self.identity))
        _, player = await publish_tone(self.room)
        self.tasks.add(player)
        return self

    def hears_since(self, frames: int) -> bool:
        """At least 50 loud frames (half a second of the tone) after the first `frames`."""
        recent = self.levels[frames:]
        return len(recent) >= 50 and float(np.mean(recent[-25:])) > LOUD

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()


@pytest.fixture
async def pair(cluster: Cluster) -> AsyncIterator[tuple[str, Listener, Listener]]:
    """A new room with alice joined through the first node and bob through the second, hearing each other."""
    room = room_name()
    alice, bob = Listener("alice"), Listener("bob")
    try:
        await alice.join(cluster.nodes[0], room)
        await bob.join(cluster.nodes[1], room)
        await eventually(lambda: alice.hears_since(0), "alice (via one node) to hear bob (via another)")
        await eventually(lambda: bob.hears_since(0), "bob to hear alice")
        yield room, alice, bob
    finally:
        await alice.close()
        await bob.close()


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def test_a_burst_of_new_rooms_spreads_evenly(cluster: Cluster) -> None:
    nodes = cluster.nodes
    names = [room_name() for _ in range(30)]
    async with lkapi(nodes[0]) as a, lkapi(nodes[1]) as b, lkapi(nodes[2]) as c:
        clients = (a, b, c)
        await asyncio.gather(
            *(clients[i % 3].room.create_room(api.CreateRoomRequest(name=n)) for i, n in enumerate(names))
        )
        counts = await eventually(
            lambda: rooms_by_node(nodes[1]),
            "every node to report its rooms",
            10,
            accept=lambda c: sum(c.values()) == 30,
        )
        assert sorted(counts.values()) == [10, 10, 10], counts
        for client in clients:  # every node lists every room
            listed = await client.room.list_rooms(api.ListRoomsRequest(names=names))
            assert sorted(r.name for r in listed.rooms) == sorted(names)
        # DeleteRoom through any node reaches the room's node
        await asyncio.gather(
            *(
                clients[(i + 1) % 3].room.delete_room(api.DeleteRoomRequest(room=n))
                for i, n in enumerate(names)
            )
        )
        assert (await a.room.list_rooms(api.ListRoomsRequest(names=names))).rooms == []
    await eventually(
        lambda: rooms_by_node(nodes[0]), "the rooms to be gone", 10, accept=lambda c: sum(c.values()) == 0
    )


async def test_participants_on_different_nodes_hear_each_other(
    cluster: Cluster, pair: tuple[str, Listener, Listener]
) -> None:
    room, alice, bob = pair
    third = cluster.nodes[2]
    async with lkapi(third) as client:  # a node that holds neither the room nor a participant
        listed = await client.room.list_participants(api.ListParticipantsRequest(room=room))
        assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
        updated = await client.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=room, metadata="m1")
        )
        assert updated.metadata == "m1"
        for node in cluster.nodes:  # ListRooms on every node agrees
            async with lkapi(node) as each:
                [found] = (await each.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
                assert (found.name, found.num_participants, found.metadata) == (room, 2, "m1")
        await client.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
        await eventually(lambda: not bob.room.isconnected(), "bob to be removed")
        await eventually(lambda: "bob" not in alice.room.remote_participants, "alice to see bob leave")
        with pytest.raises(api.TwirpError) as refused:
            await client.room.get_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
        assert refused.value.code == "not_found"


async def claimed_by(cluster: Cluster, room: str) -> str | None:
    """The id of the node Redis names as the room's owner (`{sb}:room:<name>`, see docs/cluster.md)."""
    store = redis.Redis(host="127.0.0.1", port=cluster.redis.port, decode_responses=True)
    try:
        return await store.get(f"{{sb}}:room:{room}")
    finally:
        await store.aclose()


async def owner_of(cluster: Cluster, room: str) -> Server:
    address = {n.id: n.address for n in await list_nodes(cluster.nodes[0])}[await claimed_by(cluster, room)]
    return next(node for node in cluster.nodes if node.http_url == address)


async def placed_rooms(cluster: Cluster) -> dict[str, int]:
    """Rooms per node address, as placement counts them (`{sb}:node_rooms`)."""
    store = redis.Redis(host="127.0.0.1", port=cluster.redis.port, decode_responses=True)
    try:
        counts = await store.hgetall("{sb}:node_rooms")
    finally:
        await store.aclose()
    return {n.address: int(counts.get(n.id, 0)) for n in await list_nodes(cluster.nodes[0])}


async def test_among_equals_a_new_room_stays_on_the_node_that_was_asked(cluster: Cluster) -> None:
    """Placement by fewest rooms breaks a tie in favour of the node the call reached: the room's later calls
    and joins through it then need no hop."""

    async def create_through(node: Server) -> Server:
        room = room_name()
        async with lkapi(node) as client:
            await client.room.create_room(api.CreateRoomRequest(name=room))
        return await owner_of(cluster, room)

    # Level the counts first: a room created through the busiest node goes to one of the least busy.
    while len(set((counts := await placed_rooms(cluster)).values())) > 1:
        busiest = max(cluster.nodes, key=lambda node: counts[node.http_url])
        await create_through(busiest)
    # Then, every node in turn (the last listed first) is one of the least busy when it is asked.
    for node in reversed(cluster.nodes):
        assert await create_through(node) is node


async def test_moving_a_participant_to_a_room_on_another_node_is_refused_saying_why(cluster: Cluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]

    async def room_on(node: Server) -> str:
        """A new room that the cluster placed on `node` (created through it: there, once it has no more)."""
        for _ in range(3 * len(cluster.nodes)):
            room = room_name()
            async with lkapi(node) as client:
                await client.room.create_room(api.CreateRoomRequest(name=room))
            if await owner_of(cluster, room) is node:
                return room
        pytest.fail(f"no room placed on {node.http_url}")

    on_a, on_b, also_on_a = await room_on(a), await room_on(b), await room_on(a)
    async with lkapi(cluster.nodes[2]) as client:
        for call in (
            client.room.move_participant(
                api.MoveParticipantRequest(room=on_a, identity="alice", destination_room=on_b)
            ),
            client.room.forward_participant(
                api.ForwardParticipantRequest(room=on_b, identity="alice", destination_room=on_a)
            ),
        ):
            with pytest.raises(api.TwirpError) as refused:
                await call
            assert refused.value.code == "failed_precondition"
            assert "only between rooms of one node" in refused.value.message
        # Within one node the call goes on to the room's node, which looks for the participant; a room
        # that no node holds is not found, wherever the other one is.
        for destination in (also_on_a, room_name()):
            with pytest.raises(api.TwirpError) as missing:
                await client.room.move_participant(
                    api.MoveParticipantRequest(room=on_a, identity="alice", destination_room=destination)
                )
            assert missing.value.code == "not_found"


async def test_a_resume_through_another_node_is_relayed_to_the_owner(cluster: Cluster) -> None:
    room = room_name()
    async with lkapi(cluster.nodes[0]) as client:
        await client.room.create_room(api.CreateRoomRequest(name=room))
    owner = await owner_of(cluster, room)
    relaying = next(node for node in cluster.nodes if node is not owner)
    alice, bob = Listener("alice"), Listener("bob")
    async with SignalProxy.to(relaying) as proxy:  # alice's signal connection, cut as a network blip would
        try:
            await alice.join(owner, room, url=proxy.url)
            await bob.join(owner, room)
            await eventually(lambda: alice.hears_since(0) and bob.hears_since(0), "both to hear each other")
            sid = alice.room.local_participant.sid
            proxy.cut()
            await eventually(lambda: alice.reconnects, "alice's SDK to resume through the relaying node")
            assert alice.room.local_participant.sid == sid, "a resume keeps the participant sid"
            assert f"participant resumed room={room} identity=alice sid={sid}" in owner.log()
            heard = len(alice.levels), len(bob.levels)
            await eventually(
                lambda: alice.hears_since(heard[0]) and bob.hears_since(heard[1]), "audio after the resume"
            )
        finally:
            await alice.close()
            await bob.close()


async def test_a_refused_creation_places_nothing(cluster: Cluster) -> None:
    """A CreateRoom refused by the node it was placed on (here: a name over the length limit) releases its
    claim: Redis names no owner for it."""
    name = "x" * 300
    async with lkapi(cluster.nodes[1]) as client:
        with pytest.raises(api.TwirpError) as refused:
            await client.room.create_room(api.CreateRoomRequest(name=name))
    assert refused.value.code == "invalid_argument"
    assert await claimed_by(cluster, name) is None


async def test_a_bad_token_is_refused_by_the_first_node_as_by_a_single_one(cluster: Cluster) -> None:
    first, second, _ = cluster.nodes
    room = room_name()
    async with lkapi(first) as client:
        await client.room.create_room(api.CreateRoomRequest(name=room))
    forged = mint_token(
        first.api_key,
        "not-the-secret-but-long-enough-for-hs256",
        video=VideoGrant(room_join=True, room=room),
        identity="eve",
    )
    answers = [await handshake(node, forged) for node in cluster.nodes]
    assert answers[0][0] == 401 and len(set(answers)) == 1, answers
    with pytest.raises(rtc.ConnectError):
        await rtc.Room().connect(second.ws_url, forged)
    async with api.LiveKitAPI(
        second.http_url, first.api_key, "not-the-secret-but-long-enough-for-hs256"
    ) as bad:
        with pytest.raises(api.TwirpError) as refused:
            await bad.room.list_participants(api.ListParticipantsRequest(room=room))
    assert refused.value.code == "unauthenticated"


async def test_node_list_and_drain_with_the_cli(cluster: Cluster) -> None:
    first, second, third = cluster.nodes
    listed = cli(first, "node", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout)
    assert sorted(n["address"] for n in nodes) == sorted(n.http_url for n in cluster.nodes)
    assert {n["state"] for n in nodes} == {"serving"}
    table = cli(first, "node", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "ADDRESS", "ROOMS", "PARTICIPANTS", "WORKERS", "CPU", "STATE"]
    assert len(table) == 4

    drained = next(n for n in nodes if n["address"] == third.http_url)
    result = cli(first, "node", "drain", drained["id"])  # through another node
    assert result.returncode == 0, result.stderr
    assert f"node {drained['id']} draining" in result.stdout
    try:
        before = await rooms_by_node(first)
        names = [room_name() for _ in range(6)]
        async with lkapi(third) as client:  # asked of the drained node itself
            for name in names:
                await client.room.create_room(api.CreateRoomRequest(name=name))
        after = await eventually(
            lambda: rooms_by_node(first),
            "the new rooms to show",
            10,
            accept=lambda c: sum(c.values()) == sum(before.values()) + 6,
        )
        assert after[third.http_url] == before[third.http_url], (before, after)
        states = {n["address"]: n["state"] for n in json.loads(cli(second, "node", "list", "--json").stdout)}
        assert states[third.http_url] == "draining"
    finally:
        undrained = cli(third, "node", "undrain")  # its own node, by default
        assert undrained.returncode == 0, undrained.stderr
    await eventually(
        lambda: list_nodes(first),
        "it to serve again",
        10,
        accept=lambda ns: {n.state for n in ns} == {"serving"},
    )


async def test_node_service_refuses_what_the_token_does_not_allow_and_unknown_nodes(cluster: Cluster) -> None:
    """As curl sends it (JSON): each refusal with its Twirp code, and the cluster unchanged."""
    node = cluster.nodes[0]

    async def call(method: str, token: str, body: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{node.http_url}/twirp/switchboard.NodeService/{method}",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as answer,
        ):
            return answer.status, (await answer.json())["code"]

    joiner = node.token(room_join=True, room="r")
    assert await call("ListNodes", joiner, "{}") == (403, "permission_denied")
    one_room_admin = node.token(room_admin=True, room="r")
    assert await call("DrainNode", one_room_admin, "{}") == (403, "permission_denied")
    admin = node.token(room_admin=True)
    assert await call("DrainNode", admin, '{"node_id": "ND_nobody"}') == (404, "not_found")
    assert await call("DrainNode", admin, '{"node_id": ') == (400, "malformed")
    assert await call("DrainNode", admin, '{"node_id": 7}') == (400, "malformed")
    assert {n.state for n in await list_nodes(node)} == {"serving"}


async def test_redis_away_then_back(cluster: Cluster, pair: tuple[str, Listener, Listener]) -> None:
    _, alice, bob = pair
    third = cluster.nodes[2]

    cluster.redis.stop()
    try:
        heard = len(alice.levels), len(bob.levels)
        async with lkapi(third) as client:
            started = time.monotonic()
            with pytest.raises(api.TwirpError) as refused:
                await client.room.create_room(api.CreateRoomRequest(name=room_name()))
            elapsed = time.monotonic() - started
        assert refused.value.code == "unavailable"
        assert (
            f"cluster state unavailable: Redis at {cluster.redis.address} unreachable"
            in refused.value.message
        )
        assert elapsed < UNAVAILABLE_FAST, elapsed
        status, text = await handshake(third, third.join_token(room_name(), "carol"))  # a new room
        assert (status, text) == (503, refused.value.message + "\n")
        # the running room goes on (within its node's lease)
        await eventually(
            lambda: alice.hears_since(heard[0]) and bob.hears_since(heard[1]),
            "audio while Redis is away",
            LEASE * 0.8,
        )
    finally:
        cluster.redis.start()

    async def creates() -> bool:
        async with lkapi(third) as client:
            try:
                await client.room.create_room(api.CreateRoomRequest(name=room_name()))
            except api.TwirpError:
                return False
        return True

    await eventually(creates, "new rooms to work again once Redis is back", 15)


async def test_a_node_that_loses_its_lease_sends_its_participants_to_a_live_owner(
    cluster: Cluster, pair: tuple[str, Listener, Listener]
) -> None:
    room, alice, bob = pair

    def losses() -> list[int]:
        return [n.log().count("lease lost: closing") for n in cluster.nodes]

    before = losses()
    cluster.redis.stop()
    try:
        # Past its lease without Redis, the room's node closes the room and tells both to reconnect.
        await eventually(
            lambda: all(now > then for now, then in zip(losses(), before, strict=True)),
            "every node to give up its lease",
            LEASE * 3,
        )
    finally:
        cluster.redis.start()
    heard = len(alice.levels), len(bob.levels)
    await eventually(
        lambda: alice.reconnects and bob.reconnects, "both SDKs to reconnect once Redis is back", 30
    )
    await eventually(
        lambda: alice.hears_since(heard[0]) and bob.hears_since(heard[1]),
        "audio again, on the room's new node",
    )
    async with lkapi(cluster.nodes[2]) as client:
        listed = await client.room.list_participants(api.ListParticipantsRequest(room=room))
    assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]


async def test_dispatches_through_any_node(cluster: Cluster) -> None:
    room = room_name()
    async with lkapi(cluster.nodes[2]) as creator, lkapi(cluster.nodes[0]) as reader:
        # CreateDispatch creates its room if needed: it is placed like any new room.
        dispatch = await creator.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room=room, agent_name="nobody-runs-it")
        )
        assert dispatch.room == room
        listed = await reader.agent_dispatch.list_dispatch(room)
        assert dispatch.id in {d.id for d in listed}
        [found] = (await reader.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
        assert found.name == room
        with pytest.raises(api.TwirpError) as refused:  # a reading call on an unknown room, as one node
            await reader.agent_dispatch.delete_dispatch("AD_nothing", room_name())
        assert refused.value.code == "not_found"


def test_a_node_alone_lists_itself_and_cannot_be_drained(tmp_path_factory: pytest.TempPathFactory) -> None:
    alone = start_server(tmp_path_factory.mktemp("alone"))
    try:
        listed = cli(alone, "node", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [node] = json.loads(listed.stdout)
        assert (node["address"], node["state"]) == (alone.http_url, "serving")
        refused = cli(alone, "node", "drain")
        assert refused.returncode == 1
        assert "failed_precondition" in refused.stderr and "runs alone" in refused.stderr, refused.stderr
    finally:
        stop_server(alone)


async def test_sigterm_marks_a_node_draining_before_it_drains(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    extra = start_node(tmp_path_factory.mktemp("extra"), cluster.redis, CONFIG)
    try:
        await eventually(
            lambda: rooms_by_node(cluster.nodes[0]),
            "the new node to register",
            10,
            accept=lambda c: extra.http_url in c,
        )
    finally:
        stop_server(extra)  # SIGTERM
    log = extra.log()
    assert log.index("node draining: new rooms are placed on the other nodes") < log.index("draining jobs=")
    await eventually(
        lambda: rooms_by_node(cluster.nodes[0]),
        "it to leave the cluster",
        10,
        accept=lambda c: extra.http_url not in c,
    )
