"""HS256 access tokens: verifying what clients send, and minting tokens for the CLI and for agent jobs."""

import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeGuard

import jwt
from jwt.utils import base64url_decode, base64url_encode
from jwt.warnings import InsecureKeyLengthWarning

from switchboard.auth.grants import JOB_CLAIM, Claims, InvalidToken, VideoGrant

# LiveKit's dev secret is 6 bytes, and short secrets are the user's choice: the server warns about them
# once at startup instead of PyJWT warning on every request.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

LEEWAY_SECONDS = 60
DEFAULT_TTL_SECONDS = 6 * 3600

_HEADER_SEGMENT = base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
"""The header PyJWT writes for HS256 (its keys sorted), the only one Switchboard mints."""

_PLAIN_HEADER_KEYS = frozenset(("alg", "typ"))

_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""PyJWT's payload encoding (`json.dumps` with these separators), made once instead of per token."""


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token from `Authorization: Bearer …`, else from the `access_token` query parameter."""
    header = headers.get("Authorization")
    if header is not None:
        if not header.startswith("Bearer "):
            raise InvalidToken("invalid authorization header: it must start with 'Bearer '")
        return header[len("Bearer ") :].strip()
    return query.get("access_token") or None


def _hs256(signing_input: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _plainly_current(payload: Mapping[str, Any], now: float, leeway: float) -> bool:
    """Integer `exp` (required), `nbf` and `iat` (if present) that PyJWT accepts at `now`; the floats and
    numeric strings PyJWT also reads are left to it."""
    exp = payload.get("exp")
    if not _is_int(exp) or exp <= now - leeway:
        return False
    for name in ("nbf", "iat"):
        if name in payload and not (_is_int(value := payload[name]) and value <= now + leeway):
            return False
    return True


class TokenVerifier:
    """Verifies tokens on every request, so its common case is short: see `_plainly_valid`."""

    def __init__(self, keys: Mapping[str, str], leeway: float = LEEWAY_SECONDS) -> None:
        self._keys = dict(keys)
        self._secrets = {api_key: secret.encode() for api_key, secret in keys.items()}
        self._leeway = leeway

    def secret(self, api_key: str) -> str | None:
        """The secret of a configured key (to mint a token signed like one the server verified)."""
        return self._keys.get(api_key)

    def verify(self, token: str) -> Claims:
        valid = self._plainly_valid(token)
        if valid is not None:
            return Claims.from_payload(*valid)
        # Anything else, refused or merely unusual, is PyJWT's to judge, and a refusal says why.
        return self._verify_naming_the_fault(token)

    def _plainly_valid(self, token: str) -> tuple[str, dict[str, Any]] | None:
        """(API key, payload) of a token laid out as every SDK lays one out, or None for PyJWT to judge.

        Every request carries a token, and PyJWT's general decode is most of a request's cost (it
        re-examines the secret on each call, for one thing). This accepts only a strict subset of what
        PyJWT with `_decode`'s options accepts: three segments; a header of `alg` HS256 and at most `typ`;
        a signature by the issuer's secret; integer `exp` (required), `nbf` and `iat` within the leeway;
        string `sub` and `jti` if present. tests/unit/test_tokens.py holds it to that against PyJWT.
        """
        try:
            header_segment, payload_segment, signature_segment = token.split(".")
        except ValueError:
            return None
        try:
            header = json.loads(base64url_decode(header_segment))
            payload = json.loads(base64url_decode(payload_segment))
            signature = base64url_decode(signature_segment)
        except (ValueError, RecursionError):  # binascii.Error and JSONDecodeError are ValueErrors
            return None
        if (
            not isinstance(header, dict)
            or header.get("alg") != "HS256"
            or not header.keys() <= _PLAIN_HEADER_KEYS
        ):
            return None
        if not isinstance(payload, dict):
            return None
        api_key = payload.get("iss")
        secret = self._secrets.get(api_key) if isinstance(api_key, str) else None
        if secret is None or not isinstance(api_key, str):
            return None
        signing_input = f"{header_segment}.{payload_segment}".encode()
        if not hmac.compare_digest(signature, _hs256(signing_input, secret)):
            return None
        if not _plainly_current(payload, time.time(), self._leeway):
            return None
        if not all(isinstance(payload.get(name, ""), str) for name in ("sub", "jti")):
            return None
        return api_key, payload

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
    return encode_jwt(payload, api_secret)


def encode_jwt(payload: Mapping[str, Any], secret: str) -> str:
    """The HS256 JWT of `payload`, byte for byte what `jwt.encode(payload, secret, "HS256")` makes, at a
    fraction of its cost: PyJWT re-examines the secret on every call, and jobs are signed on the
    dispatch hot path."""
    body = base64url_encode(_COMPACT_JSON.encode(payload).encode())
    signing_input = _HEADER_SEGMENT + b"." + body
    return (signing_input + b"." + base64url_encode(_hs256(signing_input, secret.encode()))).decode()


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
