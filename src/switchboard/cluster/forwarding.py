"""Twirp calls on any node: a room's RoomService and AgentDispatchService calls are answered by the room's
node, ListRooms by every node, and an operator's DrainNode by the node it names.

A call is forwarded as it came (method, path, query, headers, body) to the owner's URL, marked with
`X-Switchboard-Forwarded` so that it is never forwarded again, and the owner's answer (status, body,
content type) is the caller's: the owner authenticates and authorises it as any call. Delivery: one HTTP
request over TCP, at most once; a forwarded call that cannot reach the owner answers `unavailable`, and
the caller retries as it would any Twirp call.

The first node authenticates before anything (a bad token is refused there, as on a single node), and
checks the grant of a creating call before it claims a room, so a refused call places nothing.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf.message import Message
from livekit.protocol import models
from livekit.protocol import room as room_pb
from multidict import CIMultiDict

from switchboard.api.twirp import JSON, PROTOBUF, Method
from switchboard.auth.grants import Claims, require_room_admin, require_room_create, require_room_list
from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.ownership import ClusterUnavailable, RoomOwnership
from switchboard.cluster.placement import NoNodeAvailable
from switchboard.cluster.redis_client import UNREACHABLE
from switchboard.core.errors import FailedPrecondition, Unavailable
from switchboard.protojson import to_json

log = logging.getLogger("switchboard.cluster")

FORWARDED = "X-Switchboard-Forwarded"
"""Set on a forwarded call (to the forwarding node's id): the receiver answers it itself."""

CREATE_ROOM = "/twirp/livekit.RoomService/CreateRoom"
CREATE_DISPATCH = "/twirp/livekit.AgentDispatchService/CreateDispatch"
LIST_ROOMS = "/twirp/livekit.RoomService/ListRooms"
ROOM_SCOPED = (
    "/twirp/livekit.RoomService/",
    "/twirp/livekit.AgentDispatchService/",
    "/twirp/switchboard.DispatchService/",  # ExplainDispatch: the room's jobs are its node's
)
BETWEEN_ROOMS = (
    "/twirp/livekit.RoomService/MoveParticipant",
    "/twirp/livekit.RoomService/ForwardParticipant",
)
NODE_STEERING = ("/twirp/switchboard.NodeService/DrainNode", "/twirp/switchboard.NodeService/UndrainNode")
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "expect", "keep-alive", "te"}
CONNECT_TIMEOUT = 2.0
"""To reach another node: it is on the same network; one that does not answer by then is going away."""


def forwarded_headers(request: web.Request, node_id: str) -> CIMultiDict[str]:
    """The caller's headers for the next hop, but the hop-by-hop ones, and the forwarding mark."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
    headers[FORWARDED] = node_id
    return headers


def room_of(path: str, message: Any) -> str:
    return str(message.name if path == CREATE_ROOM else message.room)


def check_creating_grant(path: str, claims: Claims, room: str) -> None:
    """The grant the owner will check, checked before the claim (PermissionDenied)."""
    if path == CREATE_ROOM:
        require_room_create(claims)
    else:
        require_room_admin(claims, room)


def releasing(methods: dict[str, Method], ownership: RoomOwnership, path_prefix: str) -> dict[str, Method]:
    """The creating methods, releasing their room's claim when they fail here without creating it."""

    def wrap(path: str, method: Method) -> Method:
        async def handler(claims: Claims, message: Any) -> Message:
            try:
                reply = method.handler(claims, message)
                return await reply if asyncio.iscoroutine(reply) else reply  # type: ignore[return-value]
            except Exception:
                await ownership.release_unless_here(room_of(path, message))
                raise

        return Method(method.request_type, handler)

    return {
        name: wrap(path, method) if (path := path_prefix + name) in (CREATE_ROOM, CREATE_DISPATCH) else method
        for name, method in methods.items()
    }


class TwirpForwarding:
    def __init__(
        self,
        ownership: RoomOwnership,
        local_rooms: Callable[[Sequence[str]], list[models.Room]],
        stored: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.ownership = ownership
        self._stored = stored
        """Whether Redis keeps a record of a room (DispatchStore.has_record): a lost node's room."""
        self.node_id = ownership.node_id
        self._local_rooms = local_rooms
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def route(
        self, request: web.Request, claims: Claims, message: Message, body: bytes
    ) -> web.Response | None:
        """TwirpServer.route: the answer of the node that must answer, or None to answer here."""
        if FORWARDED in request.headers:
            return None
        path = request.path
        try:
            if path == LIST_ROOMS:
                return await self._list_rooms(request, claims, message)
            if path in NODE_STEERING:
                return await self._steer_node(request, message, body)
            if not path.startswith(ROOM_SCOPED) or not (room := room_of(path, message)):
                return None
            if path in (CREATE_ROOM, CREATE_DISPATCH):
                check_creating_grant(path, claims, room)
                owner = await self.ownership.claim(room)
            else:
                owner = await self.ownership.owner(room)
                if owner is None and not self.ownership.serves_here(room) and await self._stored(room):
                    # A lost node's room: it comes back on the node that claims it now, which restores it.
                    owner = await self.ownership.claim(room)
                if path in BETWEEN_ROOMS:
                    require_room_admin(claims, room)  # before telling where rooms are
                    await self._check_same_node(room, owner, message)
        except UNREACHABLE as exc:
            raise Unavailable(f"{self.ownership.unreachable}: {exc}") from None
        except (ClusterUnavailable, NoNodeAvailable) as exc:
            raise Unavailable(str(exc)) from None
        return None if owner is None else await self._forward(request, body, owner)

    async def _check_same_node(self, room: str, owner: NodeInfo | None, message: Any) -> None:
        """A participant moves or is forwarded only between rooms of one node (its connection and its
        tracks' relays are that node's)."""
        destination = str(message.destination_room)
        if owner is None and not self.ownership.serves_here(room):
            return  # no node holds the source room: the call answers not_found here
        there = await self.ownership.owner(destination) if destination else None
        if there is None and not self.ownership.serves_here(destination):
            return  # nor the destination: the source room's node answers not_found
        source, target = owner.id if owner else self.node_id, there.id if there else self.node_id
        if source != target:
            raise FailedPrecondition(
                f"room {destination!r} is on node {target} and room {room!r} on node {source}: a participant"
                " can be moved or forwarded only between rooms of one node"
            )

    async def _forward(self, request: web.Request, body: bytes, node: NodeInfo) -> web.Response:
        assert self._session is not None
        try:
            async with self._session.post(
                node.url + request.path_qs, data=body, headers=forwarded_headers(request, self.node_id)
            ) as answer:
                payload = await answer.read()
                content_type = answer.headers.get("Content-Type", JSON)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forward failed path=%s node=%s: %s", request.path, node.id, exc)
            raise Unavailable(f"node {node.id} at {node.url} cannot be reached: {exc}") from None
        return web.Response(status=answer.status, body=payload, headers={"Content-Type": content_type})

    async def _steer_node(self, request: web.Request, message: Any, body: bytes) -> web.Response | None:
        if not message.node_id or message.node_id == self.node_id:
            return None
        node = await self.ownership.node(message.node_id)
        return None if node is None else await self._forward(request, body, node)  # None: NotFound here

    async def _list_rooms(self, request: web.Request, claims: Claims, message: Any) -> web.Response:
        require_room_list(claims)
        others = [n for n in await self.ownership.nodes() if n.id != self.node_id]
        theirs = await asyncio.gather(*(self._rooms_on(n, request, message) for n in others))
        reply = room_pb.ListRoomsResponse(rooms=self._local_rooms(message.names))
        for rooms in theirs:
            reply.rooms.extend(rooms)
        if request.headers.get("Content-Type", "").split(";")[0].strip().lower() == PROTOBUF:
            return web.Response(body=reply.SerializeToString(), headers={"Content-Type": PROTOBUF})
        body = json.dumps(to_json(reply), separators=(",", ":")).encode()
        return web.Response(body=body, headers={"Content-Type": JSON})

    async def _rooms_on(self, node: NodeInfo, request: web.Request, message: Any) -> list[models.Room]:
        """One node's rooms; none from a node that cannot answer (it is going away, and its rooms too)."""
        assert self._session is not None
        headers = forwarded_headers(request, self.node_id)
        headers["Content-Type"] = PROTOBUF
        try:
            async with self._session.post(
                node.url + LIST_ROOMS, data=message.SerializeToString(), headers=headers
            ) as answer:
                payload = await answer.read()
                if answer.status != 200:
                    raise aiohttp.ClientError(f"HTTP {answer.status}: {payload[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("rooms of node %s not listed: %s", node.id, exc)
            return []
        return list(room_pb.ListRoomsResponse.FromString(payload).rooms)
