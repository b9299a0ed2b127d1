"""Twirp over aiohttp: protobuf and JSON bodies, Twirp JSON errors, authentication before any handler.

Errors always carry exactly `Content-Type: application/json` (the Node SDK reads the Twirp code only
then), and every success has a body (`{}` at least: the Node SDK crashes on an empty one).
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from switchboard.auth.grants import Claims, InvalidToken, PermissionDenied
from switchboard.auth.tokens import TokenVerifier, bearer_token
from switchboard.core.errors import CoreError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from switchboard.wire import to_json

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
    InvalidArgument: "invalid_argument",
    NotFound: "not_found",
    ResourceExhausted: "resource_exhausted",
    Unavailable: "unavailable",
}

JSON = "application/json"
PROTOBUF = "application/protobuf"


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


Handler = Callable[[Claims | None, Any], Message]


@dataclass(frozen=True)
class Method:
    request_type: type[Message]
    handler: Handler


def require_claims(claims: Claims | None) -> Claims:
    if claims is None:
        raise TwirpError("unauthenticated", "missing access token: send 'Authorization: Bearer <token>'")
    return claims


class TwirpServer:
    def __init__(self, verifier: TokenVerifier, max_body_size: int, after_call: Callable[[], None]) -> None:
        self._verifier = verifier
        self._after_call = after_call
        self._max_body_size = max_body_size
        self._methods: dict[str, Method] = {}

    def add_service(self, service: str, methods: dict[str, Method]) -> None:
        for name, method in methods.items():
            self._methods[f"/twirp/livekit.{service}/{name}"] = method

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/twirp/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except TwirpError as exc:
            log.info("twirp error path=%s code=%s msg=%s", request.path, exc.code, exc.msg)
            return exc.response()

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
        message = method.request_type()
        body = await self._read_body(request)
        try:
            if content_type == JSON:
                json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
            else:
                message.ParseFromString(body)
        except (json_format.ParseError, DecodeError, UnicodeDecodeError, RecursionError) as exc:
            kind = "json" if content_type == JSON else "protobuf"
            raise TwirpError("malformed", f"the {kind} request could not be decoded: {exc}") from exc
        try:
            reply = method.handler(claims, message)
        except PermissionDenied as exc:
            raise TwirpError("permission_denied", str(exc)) from exc
        except CoreError as exc:
            raise TwirpError(_CORE_CODES.get(type(exc), "internal"), str(exc)) from exc
        finally:
            # Whatever the handler changed, its decisions are carried out before the reply leaves.
            self._after_call()
        if content_type == JSON:
            return web.Response(
                body=json.dumps(to_json(reply), separators=(",", ":")).encode(),
                headers={"Content-Type": JSON},
            )
        return web.Response(body=reply.SerializeToString(), headers={"Content-Type": PROTOBUF})

    def _authenticate(self, request: web.Request) -> Claims | None:
        try:
            token = bearer_token(request.headers, request.query)
            return None if token is None else self._verifier.verify(token)
        except InvalidToken as exc:
            raise TwirpError("unauthenticated", str(exc)) from exc

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._max_body_size
        too_large = TwirpError("malformed", f"request body too large: the limit is {limit} bytes", status=413)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)
