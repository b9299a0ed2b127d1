"""The node registry: each node's description and load in Redis under a lease, and who is alive.

Keys (see docs/cluster.md): `{sb}:node:<id>` holds a node's NodeInfo as JSON with a time-to-live of one
lease, renewed three times per lease; `{sb}:nodes` is the set of node ids ever registered and not yet
found dead. A node whose key expired is dead: the first node to remove it from the set (SREM answers 1 to
exactly one caller) also drops its room count; every node tells its own listeners, once per dead node."""

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from switchboard.cluster.lease import Lease
from switchboard.cluster.redis_client import PREFIX, UNREACHABLE

log = logging.getLogger("switchboard.cluster")

NODES = PREFIX + "nodes"
ROOM_COUNTS = PREFIX + "node_rooms"


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


@dataclass(frozen=True)
class NodeStats:
    rooms: int = 0
    participants: int = 0
    workers: int = 0


@dataclass(frozen=True)
class NodeInfo:
    id: str
    url: str
    """Where other nodes reach this one's HTTP and WebSocket endpoints (http://host:port)."""
    state: str = "serving"
    """`serving`, or `draining`: it keeps its rooms but takes no new one."""
    rooms: int = 0
    participants: int = 0
    workers: int = 0
    cpu_load: float = 0.0
    """Share of one core this process used since the previous renewal (0 to 1 per core)."""
    started_at: float = 0.0
    updated_at: float = 0.0
    version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "NodeInfo":
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class CpuMeter:
    """The process's CPU time per wall second between two readings."""

    cpu: float = field(default_factory=time.process_time)
    wall: float = field(default_factory=time.monotonic)

    def read(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        load = (cpu - self.cpu) / max(wall - self.wall, 1e-6)
        self.cpu, self.wall = cpu, wall
        return round(load / (os.cpu_count() or 1), 3)


class NodeDescription:
    """How this node describes itself: address, state, load."""

    def __init__(self, node_id: str, url: str, stats: Callable[[], NodeStats], version: str = "") -> None:
        self.node_id = node_id
        self.url = url
        self.draining = False
        self._stats = stats
        self._version = version
        self._started_at = time.time()
        self._cpu = CpuMeter()

    def info(self) -> NodeInfo:
        stats = self._stats()
        return NodeInfo(
            id=self.node_id,
            url=self.url,
            state="draining" if self.draining else "serving",
            rooms=stats.rooms,
            participants=stats.participants,
            workers=stats.workers,
            cpu_load=self._cpu.read(),
            started_at=self._started_at,
            updated_at=time.time(),
            version=self._version,
        )


class NodeRegistry(NodeDescription):
    """This node's lease and view of the others. Listeners run on the event loop, never inside a command."""

    def __init__(
        self,
        redis: Any,
        node_id: str,
        url: str,
        lease: float,
        stats: Callable[[], NodeStats],
        version: str = "",
    ) -> None:
        super().__init__(node_id, url, stats, version)
        self.redis = redis
        self.lease = Lease(lease)
        self._alive: set[str] = set()
        self._node_lost: list[Callable[[str], None]] = []
        self._lease_lost: list[Callable[[], None]] = []
        self._lease_regained: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._was_held = False

    def on_node_lost(self, listener: Callable[[str], None]) -> None:
        """`listener(node_id)` when another node's lease lapsed (killed, or cut from Redis)."""
        self._node_lost.append(listener)

    def on_lease_lost(self, listener: Callable[[], None]) -> None:
        """When this node could not renew its lease in time: it must stop acting for its rooms."""
        self._lease_lost.append(listener)

    def on_lease_regained(self, listener: Callable[[], None]) -> None:
        self._lease_regained.append(listener)

    def holds_lease(self) -> bool:
        return self.lease.held(time.monotonic())

    async def start(self) -> None:
        """Register once before serving (a failure here is the operator's: Redis is not reachable)."""
        await self.renew()
        self._was_held = True
        self._alive = {n.id for n in await self.nodes()}
        self._task = asyncio.create_task(self._keep_alive(), name="switchboard-node-lease")

    async def stop(self) -> None:
        """Leave the cluster at once (a clean stop), instead of after a lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*UNREACHABLE):
            async with self.redis.pipeline(transaction=True) as pipe:
                await (
                    pipe.delete(node_key(self.node_id))
                    .srem(NODES, self.node_id)
                    .hdel(ROOM_COUNTS, self.node_id)
                    .execute()
                )

    async def renew(self) -> None:
        sent_at = time.monotonic()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                node_key(self.node_id), self.info().to_json(), px=int(self.lease.duration * 1000), get=True
            )
            pipe.sadd(NODES, self.node_id)
            previous, _ = await pipe.execute()
        # No previous value: the key had expired before this renewal reached Redis (a slow command, a
        # stalled process), so another node may have taken this node's rooms meanwhile. The lease is lost,
        # even though this renewal holds a new one, and the listeners hear it before anything else runs.
        lapsed = previous is None and self.lease.renewed_at is not None
        self.lease.renewed(sent_at)
        if lapsed:
            log.error("node lease lapsed in Redis before it was renewed node=%s", self.node_id)
            self._tell(self._lease_lost)
            self._tell(self._lease_regained)

    async def set_draining(self, draining: bool) -> None:
        self.draining = draining
        await self.renew()

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes, this one included, as they last described themselves."""
        ids = sorted(await self.redis.smembers(NODES))
        if not ids:
            return []
        values = await self.redis.mget([node_key(i) for i in ids])
        return [NodeInfo.from_json(v) for v in values if v is not None]

    async def node(self, node_id: str) -> NodeInfo | None:
        value = await self.redis.get(node_key(node_id))
        return None if value is None else NodeInfo.from_json(value)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.lease.renew_interval)
            # Before renewing too: a process stalled past its lease (stopped, swapped out) finds it lost,
            # as the others did, instead of renewing it as if nothing had happened.
            self._check_lease()
            try:
                await self.renew()
                await self._find_lost_nodes()
            except UNREACHABLE as exc:
                log.warning("redis unreachable, lease not renewed: %s", exc)
            self._check_lease()

    def _check_lease(self) -> None:
        held = self.holds_lease()
        if held == self._was_held:
            return
        self._was_held = held
        if held:
            log.info("node lease regained node=%s", self.node_id)
        else:
            log.error("node lease lost node=%s: its rooms are closed, others may take them", self.node_id)
            self.lease.lost()
        self._tell(self._lease_regained if held else self._lease_lost)

    @staticmethod
    def _tell(listeners: list[Callable[[], None]]) -> None:
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("lease listener failed")

    async def _find_lost_nodes(self) -> None:
        alive = {n.id for n in await self.nodes()}
        for node_id in sorted(await self.redis.smembers(NODES)):
            if node_id not in alive and await self.redis.srem(NODES, node_id):
                await self.redis.hdel(ROOM_COUNTS, node_id)
        lost = self._alive - alive
        self._alive = alive
        for node_id in sorted(lost):
            log.warning("node lost node=%s", node_id)
            for listener in self._node_lost:
                try:
                    listener(node_id)
                except Exception:
                    log.exception("node-lost listener failed")
