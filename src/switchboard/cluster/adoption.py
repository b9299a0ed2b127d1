"""Rooms of lost nodes that nobody came back to: found in the store, and brought back where the cluster
places them, so that their jobs run again and they close as any room does.

A room whose node died, or lost Redis for a lease and handed its rooms over, comes back on a live node when
a participant rejoins or a call names it (`DispatchStore.restore`). Without either, nothing would bring it
back: its record would stay in Redis, its jobs would neither run again nor end, and it would never get its
`room_finished`. So each node looks through the store's records when it starts, when it finds a node lost,
when it hands rooms over or regains its lease, and every `cluster.adopt_interval`. It brings back, through
the same `restore` as a call (which claims the room, placed by load), each room that it does not hold and
that

- its key places on this node (a look on another node placed it here), or
- no other live node owns, and that was last written by a node that is not alive or by this one (which
  handed it over when its lease lapsed). A room the claim places on another node is brought back by that
  node's own next look.

A room last written by another live node, and not placed here, is that node's: it holds it, or has just
closed it (its record's deletion may not be in Redis yet). The room of a node this node found lost waits
its departure timeout from then (a look is scheduled for it): its participants' time to come back, which
brings it back where they come, as before adoption; its agents' jobs then run again once, with them there.
A restored room nobody is in closes after its departure timeout, its participants having been cut off with
their node (`Engine.restore_room`)."""

import asyncio
import contextlib
import json
import logging
from typing import Any

from switchboard.cluster.node import ClusterNode
from switchboard.cluster.placement import room_key
from switchboard.cluster.redis_client import FAILURES
from switchboard.cluster.store import ROOM, DispatchStore, store_key
from switchboard.core.errors import Unavailable
from switchboard.core.events import RoomClosed
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.cluster")

SCAN_COUNT = 500
"""Keys Redis looks at per SCAN call."""
FORGET_LOST = 24 * 3600.0
"""How long this node remembers when it found a node lost (for its rooms' grace)."""


def adoptable(writer: str, owner: str | None, alive: set[str], here: str) -> bool:
    """Whether node `here` is to bring back a room it does not hold, whose record `writer` wrote last and
    whose key names `owner` (None: no key), while the nodes `alive` are."""
    if owner == here:
        return True  # placed here, by another node's look or a call: this node is to bring it back
    if writer in alive and writer != here:
        return False  # the writer's: it holds the room, or is closing it
    return owner is None or owner not in alive


class RoomAdoption:
    def __init__(self, cluster: ClusterNode, store: DispatchStore, runtime: Runtime) -> None:
        self._redis = cluster.redis
        self._registry = cluster.registry
        self._store = store
        self._runtime = runtime
        self._interval = cluster.settings.adopt_interval
        self._lease = cluster.settings.lease
        self._node_id = cluster.node_id
        self._wake = asyncio.Event()
        self._later: list[asyncio.TimerHandle] = []
        self._lost_at: dict[str, float] = {}
        """When this node found each node lost (the loop's clock): its rooms wait for their participants."""
        self._task: asyncio.Task[None] | None = None
        cluster.registry.on_node_lost(self._node_lost)
        # A node that lost its lease hands its rooms over (room_closed): with the lease back, they may be
        # its own to adopt.
        cluster.registry.on_lease_regained(self._wake.set)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._look_forever(), name="switchboard-room-adoption")

    async def stop(self) -> None:
        for handle in self._later:
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def room_closed(self, decision: RoomClosed) -> None:
        """An effect of RoomClosed: a room handed over here (the lease lapsed) is to be adopted, here once the
        lease is back, or elsewhere."""
        if decision.handed_over:
            self._wake.set()

    def _node_lost(self, node_id: str) -> None:
        now = asyncio.get_running_loop().time()
        self._lost_at = {node: at for node, at in self._lost_at.items() if now - at < FORGET_LOST}
        self._lost_at[node_id] = now
        self._wake.set()  # its rooms' grace is read from their records, and their looks scheduled

    def _look_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        self._later = [handle for handle in self._later if handle.when() > loop.time()]
        self._later.append(loop.call_at(when, self._wake.set))

    async def _look_forever(self) -> None:
        while True:
            try:
                await self.adopt()
            except FAILURES as exc:
                log.warning("rooms of lost nodes not looked for now (redis: %s); again later", exc)
            except Exception:  # the next look may do better; this task must not end
                log.exception("rooms of lost nodes: the look failed; again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()

    async def adopt(self) -> list[str]:
        """Bring back the rooms this node is to adopt now; their names. A look is scheduled for the first
        room still in its grace, and another a lease after it: for the rooms that the other nodes' looks
        then place here."""
        alive = {node.id for node in await self._registry.nodes()}
        adopted: list[str] = []
        due: list[float] = []
        page: list[str] = []
        async for key in self._redis.scan_iter(match=store_key("*"), count=SCAN_COUNT):
            page.append(key.removeprefix(store_key("")))
            if len(page) == SCAN_COUNT:
                adopted += await self._adopt_among(page, alive, due)
                page = []
        adopted += await self._adopt_among(page, alive, due)
        if due:
            self._look_at(min(due))
            self._look_at(min(due) + self._lease)
        return adopted

    def _grace_until(self, writer: str, record: dict[str, Any]) -> float | None:
        """Until when the room's participants may still come back (and bring it back wherever they come):
        its departure timeout from when this node found its node lost; None once that is over."""
        lost_at = self._lost_at.get(writer)
        if lost_at is None:
            return None  # lost before this node started, or this node's own
        until = lost_at + float(record["departure_timeout"])
        return until if asyncio.get_running_loop().time() < until else None

    async def _adopt_among(self, rooms: list[str], alive: set[str], due: list[float]) -> list[str]:
        """Adopt what is this node's to adopt among `rooms`; add to `due` when those still in their grace
        are."""
        rooms = [room for room in rooms if room not in self._runtime.engine.rooms]
        if not rooms:
            return []
        # One round trip for the page: each record's writer, and each room's owner.
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hget(store_key(room), ROOM).get(room_key(room))
            answers = await pipe.execute()
        adopted = []
        for room, record, owner in zip(rooms, answers[::2], answers[1::2], strict=True):
            if record is None:
                continue  # a record without its room: a closure being written
            try:
                fields = json.loads(record)
                writer = fields["node"]
                if not adoptable(writer, owner, alive, self._node_id):
                    continue
                # A room placed here by another node's look was past its grace there.
                grace = self._grace_until(writer, fields) if owner != self._node_id else None
                if grace is not None:
                    due.append(grace)
                    continue
                await self._store.restore(room)
            except Unavailable as exc:  # placed on another node (which adopts it), Redis away, or shutdown
                log.debug("room not adopted here room=%s: %s", room, exc)
                continue
            except Exception:  # one unreadable record must not keep the others from being adopted
                log.exception("room not adopted here room=%s", room)
                continue
            if room in self._runtime.engine.rooms:
                log.info("room adopted room=%s from_node=%s", room, writer)
                adopted.append(room)
        return adopted
