"""Twirp over aiohttp: protobuf and JSON bodies, Twirp JSON errors, authentication before any handler.

Errors always carry exactly `Content-Type: application/json` (the Node SDK reads the Twirp code only
then), and every success has a body (`{}` at least: the Node SDK crashes on an empty one).

A request is authenticated before a byte of its body is read: an anonymous 10 MB upload costs a header
parse, not a JSON parse. A refused request whose body was not read closes its connection.
"""

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from switchboard.api.http import HttpLimits
from switchboard.auth.grants import Claims, InvalidToken, PermissionDenied
from switchboard.auth.tokens import TokenVerifier
from switchboard.core.errors import (
    CoreError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from switchboard.protojson import check_enums, from_json, to_json

log = logging.getLogger("switchboard.api")

STATUS = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
}

_CORE_CODES: dict[type[CoreError], str] = {
    FailedPrecondition: "failed_precondition",
    InvalidArgument: "invalid_argument",
    NotFound: "not_found",
    ResourceExhausted: "resource_exhausted",
    Unavailable: "unavailable",
}

JSON = "application/json"
PROTOBUF = "application/protobuf"


def _answered_code(response: web.Response) -> str:
    """The Twirp code of an error answer made elsewhere (a forwarded call's, by the room's node)."""
    try:
        code = json.loads(response.body)["code"]  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError):
        return "unknown"
    return code if isinstance(code, str) else "unknown"


class TwirpError(Exception):
    def __init__(self, code: str, msg: str, *, status: int | None = None, meta: dict[str, str] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status or STATUS[code]
        self.meta = meta or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.meta:
            body["meta"] = self.meta
        return web.Response(
            status=self.status, body=json.dumps(body).encode(), headers={"Content-Type": JSON}
        )


Handler = Callable[[Claims, Any], Message | Awaitable[Message]]
"""A method's handler; one that waits on a participant (PerformRpc) is a coroutine."""

Route = Callable[[web.Request, Claims, Message, bytes], Awaitable[web.Response | None]]
"""Given an authenticated, decoded request (and its body as received): the answer of the node that must
handle it (the cluster forwards a room's calls to the room's node), or None to handle it here."""


@dataclass(frozen=True)
class Method:
    request_type: type[Message]
    handler: Handler


class TwirpServer:
    def __init__(
        self,
        verifier: TokenVerifier,
        limits: HttpLimits,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._verifier = verifier
        self._observe = observe
        """Told of every request: method ("Service.Method", or "unknown"), Twirp code ("ok"), seconds."""
        self._limits = limits
        self._methods: dict[str, Method] = {}
        self.route: Route | None = None
        self.counted: Callable[[web.Request], bool] = lambda request: True
        """Whether `observe` is told of a request (a cluster counts a call where its client sent it)."""

    def add_service(self, service: str, methods: dict[str, Method], package: str = "livekit") -> None:
        for name, method in methods.items():
            self._methods[f"/twirp/{package}.{service}/{name}"] = method

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/twirp/{path:.*}", self.handle, expect_handler=self._expect)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        code = "internal"
        try:
            response = await self._handle(request)
            code = "ok" if response.status < 400 else _answered_code(response)  # another node's answer
            return response
        except TwirpError as exc:
            code = exc.code
            log.info("twirp error path=%s code=%s msg=%s", request.path, exc.code, exc.msg)
            return self._refusal(request, exc)
        finally:
            if self._observe is not None and self.counted(request):
                known = request.path in self._methods
                # "/twirp/livekit.RoomService/CreateRoom" -> "RoomService.CreateRoom", whatever the package
                method = request.path.split(".", 1)[1].replace("/", ".") if known else "unknown"
                self._observe(method, code, time.perf_counter() - started)

    async def _expect(self, request: web.Request) -> web.Response | None:
        """`Expect: 100-continue`: the client waits for a go-ahead before it sends the body; a request
        that would be refused unread gets its refusal instead."""
        try:
            self._authenticate(request)
            self._check_declared_size(request)
        except TwirpError as exc:
            log.info("twirp error path=%s code=%s msg=%s", request.path, exc.code, exc.msg)
            return self._refusal(request, exc)
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    @staticmethod
    def _refusal(request: web.Request, error: TwirpError) -> web.Response:
        response = error.response()
        if not request.content.is_eof():
            # The rest of the body is not wanted: the connection closes once this answer is written
            # (HttpLimits: no lingering), and `Connection: close` tells the client so.
            response.force_close()
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            raise TwirpError(
                "bad_route",
                f'unsupported method "{request.method}" (only POST is allowed)',
                meta={"twirp_invalid_route": f"{request.method} {request.path}"},
            )
        method = self._methods.get(request.path)
        if method is None:
            raise TwirpError("bad_route", f'no handler for path "{request.path}"')
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in (JSON, PROTOBUF):
            raise TwirpError(
                "malformed",
                f'unexpected Content-Type: "{request.headers.get("Content-Type", "")}"; '
                f"use {JSON} or {PROTOBUF}",
            )
        claims = self._authenticate(request)
        self._check_declared_size(request)
        message = method.request_type()
        body = await self._read_body(request)
        try:
            if content_type == JSON:
                from_json(body or b"{}", message)
            else:
                message.ParseFromString(body)
                check_enums(message)
        except (json_format.ParseError, DecodeError, UnicodeDecodeError, RecursionError) as exc:
            kind = "json" if content_type == JSON else "protobuf"
            raise TwirpError("malformed", f"the {kind} request could not be decoded: {exc}") from exc
        except InvalidArgument as exc:
            raise TwirpError("invalid_argument", str(exc)) from exc
        try:
            routed = await self.route(request, claims, message, body) if self.route is not None else None
            if routed is not None:
                return routed
            reply = method.handler(claims, message)
            if inspect.isawaitable(reply):
                reply = await reply
        except TwirpError:
            raise
        except PermissionDenied as exc:
            raise TwirpError("permission_denied", str(exc)) from exc
        except CoreError as exc:
            raise TwirpError(_CORE_CODES.get(type(exc), "internal"), str(exc)) from exc
        # What the call decided for workers and participants (a job offer, say) is queued to their
        # WebSockets; one turn of the loop writes it before this reply is encoded and written, so the
        # dispatch's worker hears of its job a reply's work sooner, and the reply waits one frame's write.
        await asyncio.sleep(0)
        if content_type == JSON:
            return web.Response(
                body=json.dumps(to_json(reply), separators=(",", ":")).encode(),
                headers={"Content-Type": JSON},
            )
        return web.Response(body=reply.SerializeToString(), headers={"Content-Type": PROTOBUF})

    def _authenticate(self, request: web.Request) -> Claims:
        try:
            return self._verifier.verify_request(request.headers, request.query)
        except InvalidToken as exc:
            raise TwirpError("unauthenticated", str(exc)) from exc

    def _too_large(self) -> TwirpError:
        limit = self._limits.max_body_size
        return TwirpError("malformed", f"request body too large: the limit is {limit} bytes", status=413)

    def _check_declared_size(self, request: web.Request) -> None:
        if request.content_length is not None and request.content_length > self._limits.max_body_size:
            raise self._too_large()

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content.is_eof():
            # All of it came with the headers, as any small body does: nothing to wait for, no timer.
            whole = await request.content.read()
            if len(whole) > self._limits.max_body_size:
                raise self._too_large()
            return whole
        body = bytearray()
        timeout = self._limits.body_timeout
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self._limits.max_body_size:
                        raise self._too_large()
        except TimeoutError:
            raise TwirpError(
                "deadline_exceeded", f"the request body did not arrive within {timeout:g}s"
            ) from None
        return bytes(body)
