"""The dashboard on a node of a cluster (`redis:`): the page served by one node shows every node.

What LiveKit's and Switchboard's Twirp APIs already answer for the whole cluster (ListRooms, a room's
calls, forwarded to its node by cluster/forwarding.py) the page calls as on one node. The rest of what it
reads is the dashboard's own, and each node answers only for itself, so the page's node asks the others:

- a room's details (`/dashboard/room?room=`): asked of the room's node, as a Twirp call on the room is;
- the charts' last hour (`/dashboard/activity`): every node's, added up;
- the live events: while a page listens, its node follows every other live node's event stream (looked
  for again every `FOLLOW_INTERVAL`, so a node that starts is followed too) and passes their events on;
- the workers' calls (`ListWorkers`, `DrainWorker`, `UndrainWorker`) on a given node
  (`/dashboard/node/ID/twirp/switchboard.WorkerService/METHOD`): a worker's jobs and its drain belong to
  the node whose `/agent` it is connected to, and each node lists the jobs of its own rooms.

Every request to another node carries the page's own session token and the forwarding mark
(`X-Switchboard-Forwarded`): the other node authenticates it as any call and answers for itself only.
Delivery: one HTTP request (a stream for the events), at most once; events from a node that cannot be
reached are missed until it is followed again, and the `connected` event that opens each followed stream
makes the page read everything again then.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from switchboard.cluster.forwarding import CONNECT_TIMEOUT, FORWARDED, forwarded_headers
from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.ownership import RoomOwnership
from switchboard.core.errors import Unavailable

log = logging.getLogger("switchboard.api")

FOLLOW_INTERVAL = 2.0
"""How often a listening page's node looks for nodes whose events it does not follow yet."""
WORKER_CALLS = "/twirp/switchboard.WorkerService/"
"""The only calls the page makes on a chosen node."""

Event = dict[str, Any]


class DashboardNodes:
    def __init__(self, ownership: RoomOwnership) -> None:
        self.ownership = ownership
        self.node_id = ownership.node_id
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: in the server's event loop
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def room_node(self, request: web.Request, room: str) -> NodeInfo | None:
        """The node that answers for `room`'s details: None for this one (a forwarded request, a room
        here, or a room no live node holds). Raises Unavailable without Redis."""
        if FORWARDED in request.headers:
            return None
        return await self.ownership.owner(room)

    async def node(self, node_id: str) -> NodeInfo | None:
        return await self.ownership.node(node_id)

    async def forward(self, request: web.Request, node: NodeInfo, path: str) -> web.Response:
        """`request` (its method, query, headers and body) asked of `node` at `path`; its answer."""
        url = node.url + path + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with self._http().request(
                request.method,
                url,
                data=await request.read(),
                headers=forwarded_headers(request, self.node_id),
            ) as answer:
                body = await answer.read()
                content_type = answer.headers.get("Content-Type", "application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("dashboard call not forwarded path=%s node=%s: %s", path, node.id, exc)
            raise Unavailable(f"node {node.id} at {node.url} cannot be reached: {exc}") from None
        return web.Response(status=answer.status, body=body, headers={"Content-Type": content_type})

    async def gather(self, request: web.Request, path: str) -> list[Any]:
        """The JSON answers of every other live node to `request` (a GET) at `path`; none from a node that
        cannot answer now."""
        if FORWARDED in request.headers:
            return []
        headers = forwarded_headers(request, self.node_id)

        async def ask(node: NodeInfo) -> Any:
            try:
                async with self._http().get(node.url + path, headers=headers) as answer:
                    if answer.status == 200:
                        return await answer.json()
                    log.warning("dashboard: %s of node %s refused: HTTP %d", path, node.id, answer.status)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("dashboard: %s of node %s not read: %s", path, node.id, exc)
            return None

        others = [node for node in await self.ownership.nodes() if node.id != self.node_id]
        return [answer for answer in await asyncio.gather(*map(ask, others)) if answer is not None]

    async def follow(self, request: web.Request, put: Callable[[Event], None]) -> None:
        """Until cancelled: every other live node's events, passed to `put` as they arrive."""
        followed: dict[str, asyncio.Task[None]] = {}
        headers = forwarded_headers(request, self.node_id)
        try:
            while True:
                try:
                    nodes = await self.ownership.nodes()
                except Unavailable as exc:
                    log.warning("dashboard: other nodes' events not followed now: %s", exc)
                    nodes = []
                for node in nodes:
                    task = followed.get(node.id)
                    if node.id != self.node_id and (task is None or task.done()):
                        followed[node.id] = asyncio.create_task(self._events_of(node, headers, put))
                await asyncio.sleep(FOLLOW_INTERVAL)
        finally:
            for task in followed.values():
                task.cancel()
            for task in followed.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _events_of(self, node: NodeInfo, headers: Any, put: Callable[[Event], None]) -> None:
        try:
            async with self._http().get(node.url + "/dashboard/events", headers=headers) as stream:
                if stream.status != 200:
                    log.warning("dashboard: events of node %s refused: HTTP %d", node.id, stream.status)
                    return
                async for line in stream.content:
                    if line.startswith(b"data: "):
                        put(json.loads(line[6:]))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("dashboard: events of node %s interrupted: %s", node.id, exc)
