"""Claims of a LiveKit access token, read tolerantly, and the permission checks built on them."""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from google.protobuf import json_format
from livekit.protocol.room import RoomConfiguration

from switchboard.core.errors import InvalidArgument
from switchboard.protojson import from_dict


class InvalidToken(Exception):
    """The token cannot be trusted or read; the message says why and never contains the token."""


class PermissionDenied(Exception):
    """A valid token whose grants do not allow the request."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class VideoGrant:
    """The `video` claim. Field names are snake_case here and camelCase in the token."""

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    destination_room: str = ""
    """The room MoveParticipant and ForwardParticipant may take a participant to."""
    can_publish: bool | None = None
    can_subscribe: bool | None = None
    can_publish_data: bool | None = None
    can_publish_sources: tuple[str, ...] = ()
    can_update_own_metadata: bool | None = None
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False

    @classmethod
    def from_claim(cls, claim: object) -> "VideoGrant":
        if claim is None:
            return cls()
        if not isinstance(claim, Mapping):
            raise InvalidToken("invalid token: 'video' claim must be an object")
        values: dict[str, Any] = {}
        for name, claim_name, _ in _GRANTS:
            raw = claim.get(claim_name)
            if raw is None:
                continue
            if name in ("room", "destination_room"):
                if not isinstance(raw, str):
                    raise InvalidToken(f"invalid token: video.{claim_name} must be a string")
                values[name] = raw
            elif name == "can_publish_sources":
                if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
                    raise InvalidToken("invalid token: video.canPublishSources must be a list of strings")
                values[name] = tuple(s.lower() for s in raw)
            else:
                if not isinstance(raw, bool):
                    raise InvalidToken(f"invalid token: video.{claim_name} must be true or false")
                values[name] = raw
        return cls(**values)

    def to_claim(self) -> dict[str, Any]:
        """Only the grants that are set, as the official SDKs write them."""
        claim: dict[str, Any] = {}
        for name, claim_name, default in _GRANTS:
            value = getattr(self, name)
            if value == default:  # an explicit False on a None-default grant is kept
                continue
            claim[claim_name] = list(value) if isinstance(value, tuple) else value
        return claim


_GRANTS = tuple((f.name, _camel(f.name), f.default) for f in fields(VideoGrant))
"""(field, claim name, default) of each grant, worked out once: every token read or minted walks them."""


@dataclass(frozen=True)
class Claims:
    api_key: str
    identity: str = ""
    name: str = ""
    kind: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    video: VideoGrant = field(default_factory=VideoGrant)
    room_config: RoomConfiguration | None = None
    job: tuple[str, int] | None = None
    """(job id, attempt) in the tokens Switchboard mints for agent jobs; None in any other token."""

    @classmethod
    def from_payload(cls, api_key: str, payload: Mapping[str, Any]) -> "Claims":
        attributes = payload.get("attributes") or {}
        if not isinstance(attributes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise InvalidToken("invalid token: 'attributes' must map strings to strings")
        strings = {}
        for name in ("sub", "jti", "name", "kind", "metadata"):
            value = payload.get(name) or ""
            if not isinstance(value, str):
                raise InvalidToken(f"invalid token: '{name}' must be a string")
            strings[name] = value
        return cls(
            api_key=api_key,
            identity=strings["sub"] or strings["jti"],
            name=strings["name"],
            kind=strings["kind"].lower(),
            metadata=strings["metadata"],
            attributes=dict(attributes),
            video=VideoGrant.from_claim(payload.get("video")),
            room_config=_room_config(payload.get("roomConfig")),
            job=_job(payload.get(JOB_CLAIM)),
        )


JOB_CLAIM = "switchboardJob"
"""The claim that ties an agent's token to its job and attempt, so a stale copy is recognised at join."""


def _job(claim: object) -> tuple[str, int] | None:
    if claim is None:
        return None
    if not isinstance(claim, Mapping):
        raise InvalidToken(f"invalid token: '{JOB_CLAIM}' must be an object")
    job_id, attempt = claim.get("id"), claim.get("attempt")
    if not isinstance(job_id, str) or not isinstance(attempt, int) or isinstance(attempt, bool):
        raise InvalidToken(f"invalid token: '{JOB_CLAIM}' needs a string 'id' and an integer 'attempt'")
    return job_id, attempt


def _room_config(claim: object) -> RoomConfiguration | None:
    """Node writes every default and enum names, Python camelCase with defaults omitted: accept both.
    An enum value the protocol does not define (`"restartPolicy": "JRP_BOGUS"`, or `99`) makes the token
    invalid, as in LiveKit, rather than the room's agents silently getting the default."""
    if claim is None:
        return None
    if not isinstance(claim, Mapping):
        raise InvalidToken("invalid token: 'roomConfig' must be an object")
    config = RoomConfiguration()
    try:
        from_dict(dict(claim), config)
    except (json_format.ParseError, InvalidArgument) as exc:
        raise InvalidToken(f"invalid token: roomConfig: {exc}") from exc
    return config


def require_room_admin(claims: Claims, room: str) -> None:
    """Admin calls on one room need `roomAdmin` and a `room` grant naming exactly that room."""
    if not claims.video.room_admin:
        raise PermissionDenied(f"permissions denied: the roomAdmin grant is required for room '{room}'")
    if claims.video.room != room:
        raise PermissionDenied(
            f"permissions denied: the token's room grant is '{claims.video.room}', not '{room}'"
        )


def require_destination_room(claims: Claims, room: str, destination: str) -> None:
    """Taking a participant to another room (MoveParticipant): `roomAdmin` on its room, and the
    `destinationRoom` grant naming the other (as LiveKit)."""
    require_room_admin(claims, room)
    if claims.video.destination_room != destination:
        raise PermissionDenied(
            f"permissions denied: the token's destinationRoom grant is "
            f"'{claims.video.destination_room}', not '{destination}'"
        )


def require_room_create(claims: Claims) -> None:
    if not claims.video.room_create:
        raise PermissionDenied("permissions denied: the roomCreate grant is required")


def require_room_list(claims: Claims) -> None:
    if not claims.video.room_list:
        raise PermissionDenied("permissions denied: the roomList grant is required")


def require_server_admin(claims: Claims) -> None:
    """Calls that act on the whole server (draining a worker touches every room it serves) need
    `roomAdmin` with no `room` restriction."""
    if not claims.video.room_admin or claims.video.room:
        raise PermissionDenied(
            "permissions denied: the roomAdmin grant without a room restriction is required"
        )


def require_server_view(claims: Claims) -> None:
    """Listing what serves every room (workers and the rooms of their jobs) needs `roomList`, or
    `roomAdmin` with no `room` restriction."""
    if not claims.video.room_list and not (claims.video.room_admin and not claims.video.room):
        raise PermissionDenied(
            "permissions denied: the roomList grant (or roomAdmin without a room restriction) is required"
        )


def require_admin_of(claims: Claims, room: str) -> None:
    """Switchboard's own per-room calls: `roomAdmin` on that room, or with no room restriction at all (an
    admin of every room, as the dashboard's session is)."""
    if claims.video.room_admin and not claims.video.room:
        return
    require_room_admin(claims, room)
