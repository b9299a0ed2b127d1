"""Several `switchboard serve` processes sharing one real redis-server: the cluster tests' deployment."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from switchboard.cluster.redis_client import PREFIX
from tests.conftest import Server, start_server, stop_server
from tests.polling import eventually
from tests.redis_server import RedisServer

LEASE = 1.5
"""Short, so that a killed node is found dead fast; long enough for a loaded 2-core machine to renew."""

AGENTS = {
    "availability_timeout": 3,
    "pending_timeout": 60,
    "reconnect_grace": 5,
    "restart_backoff": 0.1,
    "start_timeout": 20,
}
"""The `agents:` timeouts of the modules that dispatch across nodes: short re-offers and restarts, and no
job given up while a test kills or stalls a node."""


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Server]


def node_config(redis: RedisServer, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A node's settings: this Redis, a short lease, short room timeouts; `config` adds or overrides."""
    settings: dict[str, Any] = {
        "redis": {"address": redis.address, "timeout": 0.5},
        "cluster": {"lease": LEASE},
        "room": {"empty_timeout": 300, "departure_timeout": 20},
        "logging": {"level": "debug"},
    }
    settings.update(config or {})
    return settings


def start_cluster(directory: Path, count: int, config: dict[str, Any] | None = None) -> Cluster:
    redis = RedisServer(directory / "redis")
    redis.directory.mkdir(parents=True, exist_ok=True)
    redis.start()
    nodes: list[Server] = []
    try:
        for index in range(count):
            nodes.append(start_node(directory / f"node{index}", redis, config))
    except BaseException:
        stop_cluster(Cluster(redis, nodes))
        raise
    return Cluster(redis, nodes)


def start_node(directory: Path, redis: RedisServer, config: dict[str, Any] | None = None) -> Server:
    return start_server(directory, node_config(redis, config))


def cli(node: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """`switchboard ARGS` against `node`, with its URL and credentials, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    credentials = ("--url", node.http_url, "--api-key", node.api_key, "--api-secret", node.api_secret)
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args, *credentials],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def place_rooms_on(cluster: Cluster, node: Server) -> None:
    """Drain every other node (`switchboard node drain`): new rooms then all go to `node`, while the
    drained nodes still serve their workers and rooms."""
    for other in cluster.nodes:
        if other is not node:
            result = cli(other, "node", "drain")
            assert result.returncode == 0, result.stderr


def kill_node(node: Server) -> None:
    """`kill -9`: no drain, no goodbye to Redis; the others find out when its lease lapses."""
    node.process.send_signal(signal.SIGKILL)
    node.process.wait()


async def dead_to_the_others(redis: RedisServer, node: Server) -> None:
    """Wait until `node`'s lease has lapsed in Redis: until then its rooms are still its own (calls on them
    answer `unavailable`), after it the next call or join brings them back on a live node."""
    client = aioredis.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)

    async def listed() -> bool:
        described = [await client.get(key) for key in await client.keys(PREFIX + "node:*")]
        return any(d is not None and json.loads(d)["url"] == node.http_url for d in described)

    try:
        await eventually(listed, f"the lease of {node.http_url} to lapse", accept=lambda alive: not alive)
    finally:
        await client.aclose()


async def owner_of(cluster: Cluster, room: str) -> tuple[str, Server | None]:
    """The id of the node Redis names as `room`'s owner (`{sb}:room:<name>`) and that node, if it is one
    of `cluster`'s and its lease lives (its `{sb}:node:<id>` key holds its URL); ("", None) if unplaced."""
    client = aioredis.Redis(host="127.0.0.1", port=cluster.redis.port, decode_responses=True)
    try:
        node_id = await client.get(f"{PREFIX}room:{room}") or ""
        described = await client.get(f"{PREFIX}node:{node_id}") if node_id else None
    finally:
        await client.aclose()
    url = json.loads(described)["url"] if described else None
    return node_id, next((node for node in cluster.nodes if node.http_url == url), None)


def stop_cluster(cluster: Cluster) -> None:
    for node in cluster.nodes:
        if node.process.poll() is None:
            stop_server(node)
    cluster.redis.stop()
