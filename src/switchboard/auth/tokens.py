"""HS256 access tokens: verifying what clients send, and minting tokens for the CLI and for agent jobs."""

import contextlib
import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from switchboard.auth.grants import JOB_CLAIM, Claims, InvalidToken, VideoGrant

# LiveKit's dev secret is 6 bytes, and short secrets are the user's choice: the server warns about them
# once at startup instead of PyJWT warning on every request.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

LEEWAY_SECONDS = 60
DEFAULT_TTL_SECONDS = 6 * 3600


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token from `Authorization: Bearer …`, else from the `access_token` query parameter."""
    header = headers.get("Authorization")
    if header is not None:
        if not header.startswith("Bearer "):
            raise InvalidToken("invalid authorization header: it must start with 'Bearer '")
        return header[len("Bearer ") :].strip()
    return query.get("access_token") or None


class TokenVerifier:
    def __init__(self, keys: Mapping[str, str], leeway: float = LEEWAY_SECONDS) -> None:
        self._keys = dict(keys)
        self._leeway = leeway

    def secret(self, api_key: str) -> str | None:
        """The secret of a configured key (to mint a token signed like one the server verified)."""
        return self._keys.get(api_key)

    def verify(self, token: str) -> Claims:
        if len(self._keys) == 1:
            # One secret to try: the token is parsed once, by the verifying decode, and its issuer checked
            # after. Only a refused token is parsed again, below, to say precisely why.
            [(api_key, secret)] = self._keys.items()
            with contextlib.suppress(jwt.PyJWTError):
                payload = self._decode(token, secret)
                if payload.get("iss") == api_key:
                    return Claims.from_payload(api_key, payload)
        return self._verify_naming_the_fault(token)

    def _verify_naming_the_fault(self, token: str) -> Claims:
        """Read the unverified token for its algorithm and issuer, then verify it with that key's secret."""
        try:
            unverified_token = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: cannot be decoded ({exc})") from exc
        header, unverified = unverified_token["header"], unverified_token["payload"]
        if header.get("alg") != "HS256":
            raise InvalidToken(f"invalid token: signing algorithm {header.get('alg')!r} is not HS256")
        api_key = unverified.get("iss")
        secret = self._keys.get(api_key) if isinstance(api_key, str) else None
        if secret is None or not isinstance(api_key, str):
            raise InvalidToken("invalid API key: the token's issuer is not a configured key")
        try:
            payload = self._decode(token, secret)
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("invalid token: it has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("invalid token: it is not valid yet (nbf)") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("invalid token: signature verification failed") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        return Claims.from_payload(api_key, payload)

    def _decode(self, token: str, secret: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=self._leeway,
            options={"require": ["exp"], "verify_aud": False},
        )

    def verify_request(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Claims:
        """The claims of the token a request carries (header or `access_token`); a missing one is invalid."""
        token = bearer_token(headers, query)
        if token is None:
            raise InvalidToken("missing access token: send 'Authorization: Bearer <token>'")
        return self.verify(token)


def mint_token(
    api_key: str,
    api_secret: str,
    *,
    video: VideoGrant,
    identity: str = "",
    name: str = "",
    kind: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    room_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    ttl: float = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> str:
    """A token laid out as the official SDKs lay it out (grants under `video`, camelCase)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": issued,
        "exp": issued + int(ttl),
        "video": video.to_claim(),
    }
    optional = {"name": name, "kind": kind, "metadata": metadata, "attributes": dict(attributes or {})}
    payload.update({key: value for key, value in optional.items() if value})
    if room_config:
        payload["roomConfig"] = dict(room_config)
    payload.update(extra or {})
    return jwt.encode(payload, api_secret, algorithm="HS256")


JOB_TOKEN_TTL_SECONDS = 3600


def mint_job_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    job_id: str,
    attempt: int,
    agent_name: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permissions: VideoGrant,
    now: float | None = None,
) -> str:
    """The token an agent joins its job's room with, laid out as LiveKit's server mints it.

    Signed with the worker's own API key; kind `agent`; the worker's attributes plus `lk.agent_name`;
    the room grants that the worker registered with (`permissions`). Beyond LiveKit's layout, it names
    the job and attempt, so that a stale copy of the job is refused when it tries to join.
    """
    video = replace(permissions, room_join=True, room=room, agent=True)
    return mint_token(
        api_key,
        api_secret,
        video=video,
        identity=identity,
        name=name,
        kind="agent",
        metadata=metadata,
        attributes={**attributes, "lk.agent_name": agent_name},
        extra={JOB_CLAIM: {"id": job_id, "attempt": attempt}},
        ttl=JOB_TOKEN_TTL_SECONDS,
        now=now,
    )
