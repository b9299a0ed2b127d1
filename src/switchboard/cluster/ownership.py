"""This node's side of room placement: where a room's joins and calls go, the claim before a room is
created here, the release when it closes here, and the end of its rooms when the lease is lost.

The rule that keeps one owner per room: a room is created in this node's engine only after Redis named
this node its owner, and the node stops serving its rooms (closes them) once it could not renew its lease,
before any other node can see it dead and claim them. So while the lease holds, a room in the engine is
this node's, and its joins and calls need no Redis round trip at all (`serves_here`): a room keeps
running while Redis is away, for up to a lease.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from switchboard.cluster.node import ClusterNode
from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.redis_client import UNREACHABLE
from switchboard.core.errors import Unavailable
from switchboard.core.events import RoomClosed
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.cluster")

T = TypeVar("T")


class ClusterUnavailable(Unavailable):
    """Redis cannot be reached, so where a room lives cannot be known (Twirp `unavailable`, HTTP 503)."""


def handled_here(node_id: str, owner: NodeInfo | None) -> bool:
    """A call with this owner is answered here: this node owns the room, or no live node does (then it
    is an unknown room, answered as one)."""
    return owner is None or owner.id == node_id


class RoomOwnership:
    def __init__(
        self, cluster: ClusterNode, runtime: Runtime, send_elsewhere: Callable[[], Awaitable[None]]
    ) -> None:
        self.cluster = cluster
        self.node_id = cluster.node_id
        self.runtime = runtime
        self._send_elsewhere = send_elsewhere
        """Tells every participant connected here to reconnect (and so reach the room's next owner)."""
        self._releases: dict[str, asyncio.Task[None]] = {}
        self._unreleased: set[str] = set()
        """Rooms closed here while Redis was away: released once the lease is regained (if not created here
        again)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._fenced: set[str] = set()
        """Rooms still closing here after the lease was lost: no longer this node's, whatever the lease."""
        self.record_written: Callable[[str], Awaitable[None]] | None = None
        """The store's `DispatchStore.written`: a closed room's key goes only once its record's deletion is
        in Redis, or another node's look (cluster/adoption.py) could take a record still there for the
        room of a lost node, and bring back a room just closed."""
        cluster.registry.on_lease_lost(self._lease_lost)
        cluster.registry.on_lease_regained(self._lease_regained)

    @property
    def unreachable(self) -> str:
        return f"cluster state unavailable: Redis at {self.cluster.redis_address} unreachable"

    def serves_here(self, room: str) -> bool:
        rooms = self.runtime.engine.rooms
        return room in rooms and room not in self._fenced and self.cluster.registry.holds_lease()

    async def claim(self, room: str) -> NodeInfo | None:
        """Where `room` is to be created: None for here (claimed for this node), else its owner."""
        if self.serves_here(room):
            return None
        release = self._releases.get(room)
        if release is not None:  # its key must be gone before it is claimed again, or the claim is lost
            await release
        node = await self._ask(self.cluster.placement.claim(room))
        if node.id != self.node_id:
            return node
        if not self.cluster.registry.holds_lease():  # its key lives, but this node may not act on it yet
            raise ClusterUnavailable(f"node {self.node_id} is renewing its lease: try again")
        return None

    async def owner(self, room: str) -> NodeInfo | None:
        """Where `room`'s calls go: None for here (also when no live node holds it), else its owner."""
        if self.serves_here(room):
            return None
        node = await self._ask(self.cluster.placement.owner(room))
        return None if handled_here(self.node_id, node) else node

    async def nodes(self) -> list[NodeInfo]:
        return await self._ask(self.cluster.registry.nodes())

    async def node(self, node_id: str) -> NodeInfo | None:
        return await self._ask(self.cluster.registry.node(node_id))

    async def _ask(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except UNREACHABLE as exc:
            log.warning("%s: %s", self.unreachable, exc)
            raise ClusterUnavailable(self.unreachable) from None

    # Releasing

    def room_closed(self, decision: RoomClosed) -> None:
        """An effect of the engine's RoomClosed: the room's key goes, so the next claim places it anew."""
        self._fenced.discard(decision.room)
        self._release(decision.room)

    def _release(self, room: str) -> None:
        """Release a closed room's key in a task that a claim of the same room waits for."""
        task = asyncio.create_task(self._release_closed(room))
        self._releases[room] = task
        task.add_done_callback(lambda done: self._forget_release(room, done))

    def _forget_release(self, room: str, task: asyncio.Task[None]) -> None:
        if self._releases.get(room) is task:
            del self._releases[room]

    async def _release_closed(self, room: str) -> None:
        if self.record_written is not None:
            try:
                await asyncio.wait_for(self.record_written(room), self.cluster.settings.lease)
            except (Unavailable, TimeoutError):
                # Redis away: the key waits with the record, until the lease is regained. A key left
                # behind only counts one room too many for this node; a key gone before the record would
                # let another node's look bring the closed room back.
                self._unreleased.add(room)
                return
        await self.release_unless_here(room)

    async def release_unless_here(self, room: str) -> None:
        """Release a room this node claimed but does not hold (closed, or never created: a refused join
        or CreateRoom); kept for later while Redis is away."""
        if room in self.runtime.engine.rooms:
            return
        try:
            await self.cluster.placement.release(room)
            self._unreleased.discard(room)
        except UNREACHABLE:
            self._unreleased.add(room)

    # The lease

    def _lease_lost(self) -> None:
        rooms = len(self.runtime.engine.rooms)
        log.error("lease lost: closing %d room(s); their participants are told to reconnect", rooms)
        self._fenced.update(self.runtime.engine.rooms)  # at once: the closing below takes a moment
        self._spawn(self._stop_serving())

    async def _stop_serving(self) -> None:
        # Participants first, with leave RECONNECT (the SDKs rejoin, and land on the room's next owner);
        # then the rooms are handed over: they close here, but what the store keeps of them stays, so the
        # node that takes one over restores its dispatches and runs its jobs again.
        await self._send_elsewhere()
        reason = f"handed over: node {self.node_id} lost its lease"
        self.runtime.call(lambda engine: engine.hand_over_rooms(reason, self.runtime.now()))

    def _lease_regained(self) -> None:
        for room in sorted(self._unreleased):
            self._release(room)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
