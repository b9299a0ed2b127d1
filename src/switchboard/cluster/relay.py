"""`/rtc` on any node: a participant's signalling reaches its room's node through the node it reached.

A join for a room owned elsewhere (and a resume, `reconnect=1`, of a session there) is relayed: this node
opens the same `/rtc` request (path, query, headers) to the owner and passes WebSocket frames both ways,
unchanged, and the close code of whichever side closes first to the other. The relayed stream is the LiveKit
signal protocol itself over one more TCP hop: ordered, reliable, with no protocol of our own between the
nodes. The owner's JoinResponse carries the owner's own ICE candidates, so media goes straight to the
owner; only signalling takes the detour. The token is checked here first (a bad one is refused with the
same HTTP error as on a single node), and again by the owner, which is the one that admits the join.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from livekit.protocol import models, rtc

from switchboard.cluster.forwarding import CONNECT_TIMEOUT, FORWARDED, forwarded_headers
from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.ownership import ClusterUnavailable, RoomOwnership
from switchboard.cluster.placement import NoNodeAvailable
from switchboard.rtc.service import RtcService

log = logging.getLogger("switchboard.cluster")

RTC = "/rtc"
VALIDATE = "/rtc/validate"
_HANDSHAKE = ("upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SignalRelay:
    def __init__(self, ownership: RoomOwnership, rtc_service: RtcService) -> None:
        self.ownership = ownership
        self.rtc = rtc_service
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Before `/rtc` and `/rtc/validate`: relay to the room's owner, or let this node handle it."""
        if request.path not in (RTC, VALIDATE):
            return await handler(request)
        if request.path == RTC and not web.WebSocketResponse().can_prepare(request).ok:
            return await handler(request)  # not a WebSocket: refused as on a single node
        _, room = self.rtc.authorize(request)
        resume = request.query.get("reconnect") in ("1", "true")
        if FORWARDED not in request.headers:
            try:
                joining = request.path == RTC and not resume
                owner = await (self.ownership.claim(room) if joining else self.ownership.owner(room))
            except (ClusterUnavailable, NoNodeAvailable) as exc:
                log.warning("join refused room=%s: %s", room, exc)
                raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
            if owner is not None:
                return await (
                    self._relay(request, owner) if request.path == RTC else self._validate(request, owner)
                )
        if request.path == VALIDATE or resume:
            return await handler(request)
        try:
            return await handler(request)
        except Exception:  # a refused join (before the upgrade): the claim was for nothing
            await self.ownership.release_unless_here(room)
            raise

    async def _validate(self, request: web.Request, owner: NodeInfo) -> web.Response:
        """The owner's verdict on a join (the SDKs fetch it to show why a join failed)."""
        assert self._session is not None
        try:
            async with self._session.get(
                owner.url + request.path_qs, headers=forwarded_headers(request, self.ownership.node_id)
            ) as answer:
                body = await answer.read()
                return web.Response(status=answer.status, body=body, content_type=answer.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise web.HTTPServiceUnavailable(text=f"node {owner.id} at {owner.url}: {exc}\n") from None

    async def _relay(self, request: web.Request, owner: NodeInfo) -> web.StreamResponse:
        assert self._session is not None
        settings = self.rtc.settings
        headers = forwarded_headers(request, self.ownership.node_id)
        for name in _HANDSHAKE:
            headers.popall(name, None)
        url = owner.url.replace("http", "ws", 1) + request.path_qs
        try:
            upstream = await self._session.ws_connect(
                url, headers=headers, heartbeat=settings.ping_timeout, max_msg_size=settings.max_message_size
            )
        except aiohttp.WSServerHandshakeError as exc:  # the owner refused the join: the same status here
            return web.Response(status=exc.status, text=f"{exc.message}\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("relay failed node=%s: %s", owner.id, exc)
            raise web.HTTPServiceUnavailable(text=f"node {owner.id} at {owner.url}: {exc}\n") from None
        downstream = web.WebSocketResponse(
            heartbeat=settings.ping_timeout, max_msg_size=settings.max_message_size
        )
        try:
            await downstream.prepare(request)
            log.info("signalling relayed node=%s path=%s", owner.id, request.path)
            pumps = [
                asyncio.create_task(_pump(downstream, upstream)),
                asyncio.create_task(_pump(upstream, downstream)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            await upstream.close()
        return downstream


async def send_everyone_elsewhere(rtc_service: RtcService) -> None:
    """Every participant connected here is told to reconnect (leave, action RECONNECT): the SDKs do a
    full reconnect, which lands on the room's next owner; then their sessions here end."""
    sessions = [session for room in list(rtc_service.rooms.values()) for session in room.others()]
    leave = rtc.LeaveRequest(
        can_reconnect=True, action=rtc.LeaveRequest.RECONNECT, reason=models.SERVER_SHUTDOWN
    )
    for session in sessions:
        session.signal.send(rtc.SignalResponse(leave=leave))
    await asyncio.gather(*(s.close(models.SERVER_SHUTDOWN) for s in sessions), return_exceptions=True)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Frames from `source` to `sink` until `source` closes; then `sink` closes with the same code."""
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        async for message in source:
            if message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
    await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)
