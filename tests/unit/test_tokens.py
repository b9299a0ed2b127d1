"""Token verification: what is accepted, what is refused, and why."""

import datetime
import hashlib
import hmac
import json
import time
from typing import Any
from unittest import mock

import jwt
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jwt.utils import base64url_encode
from livekit import api as livekit_api

from switchboard.auth import tokens
from switchboard.auth.grants import (
    Claims,
    InvalidToken,
    PermissionDenied,
    VideoGrant,
    require_room_admin,
    require_room_create,
    require_room_list,
)
from switchboard.auth.tokens import TokenVerifier, bearer_token, encode_jwt, mint_job_token, mint_token

KEY, SECRET = "key", "a-secret-long-enough-for-hmac-sha256!"
verifier = TokenVerifier({KEY: SECRET})


def sign(payload: dict[str, Any], secret: str = SECRET, **kwargs: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", **kwargs)


def claims(**extra: Any) -> dict[str, Any]:
    # Valid for a day: parametrized tokens are signed when the suite is collected, and a whole run can
    # last longer than a short validity, after which "expired" would hide the fault a test looks for.
    now = int(time.time())
    return {"iss": KEY, "sub": "", "nbf": now, "exp": now + 24 * 3600, **extra}


def test_minted_token_round_trips() -> None:
    token = mint_token(
        KEY,
        SECRET,
        video=VideoGrant(room_join=True, room="r"),
        identity="u",
        name="User",
        metadata="md",
        attributes={"a": "b"},
        room_config={"agents": [{"agentName": "x", "metadata": "m"}]},
    )
    parsed = verifier.verify(token)
    assert (parsed.api_key, parsed.identity, parsed.name, parsed.metadata) == (KEY, "u", "User", "md")
    assert parsed.attributes == {"a": "b"} and parsed.video.room_join and parsed.video.room == "r"
    assert parsed.room_config is not None and parsed.room_config.agents[0].agent_name == "x"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["video"] == {"roomJoin": True, "room": "r"}
    assert payload["exp"] - payload["nbf"] == 6 * 3600


def test_python_sdk_service_token_layout_is_accepted() -> None:
    video = {"roomAdmin": True, "room": "r", "canPublish": True, "canSubscribe": True, "canPublishData": True}
    parsed = verifier.verify(sign(claims(video=video), headers={"typ": "JWT"}))
    assert parsed.video.room_admin and parsed.video.can_publish and parsed.identity == ""


def test_node_room_config_with_every_default_and_enum_names_is_accepted() -> None:
    node_config = {
        "name": "",
        "emptyTimeout": 0,
        "departureTimeout": 0,
        "maxParticipants": 0,
        "minPlayoutDelay": 0,
        "maxPlayoutDelay": 0,
        "syncStreams": False,
        "agents": [
            {
                "agentName": "a",
                "metadata": "",
                "restartPolicy": "JRP_ON_FAILURE",
                "deployment": "",
                "attributes": {},
            }
        ],
        "metadata": "",
        "tags": {},
        "someFutureField": {"x": 1},
    }
    parsed = verifier.verify(sign(claims(video={"roomJoin": True, "room": "r"}, roomConfig=node_config)))
    assert parsed.room_config is not None
    assert [a.agent_name for a in parsed.room_config.agents] == ["a"]


def test_identity_falls_back_to_jti() -> None:
    assert verifier.verify(sign(claims(jti="from-jti"))).identity == "from-jti"


def test_leeway_of_60_seconds_on_exp_and_nbf() -> None:
    now = int(time.time())
    verifier.verify(sign(claims(exp=now - 30)))
    verifier.verify(sign(claims(nbf=now + 30)))
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(sign(claims(exp=now - 120)))
    with pytest.raises(InvalidToken, match="not valid yet"):
        verifier.verify(sign(claims(nbf=now + 120)))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "cannot be decoded"),
        (sign(claims(), secret="wrong-secret-wrong-secret-wrong-secret"), "signature verification failed"),
        (sign(claims(iss="other")), "invalid API key"),
        (sign({k: v for k, v in claims().items() if k != "iss"}), "invalid API key"),
        (sign({k: v for k, v in claims().items() if k != "exp"}), "exp"),
        (jwt.encode(claims(), None, algorithm="none"), "signing algorithm 'none' is not HS256"),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), "signing algorithm 'HS512' is not HS256"),
        (sign(claims(video="yes")), "'video' claim must be an object"),
        (sign(claims(video={"roomAdmin": "true"})), "video.roomAdmin must be true or false"),
        (sign(claims(video={"room": 5})), "video.room must be a string"),
        (sign(claims(attributes={"a": 1})), "'attributes' must map strings to strings"),
        (sign(claims(roomConfig={"agents": "x"})), "roomConfig"),
        (sign(claims(roomConfig=[])), "'roomConfig' must be an object"),
        (
            sign(claims(roomConfig={"agents": [{"agentName": "a", "restartPolicy": "JRP_BOGUS"}]})),
            "roomConfig: unknown agents.restart_policy 'JRP_BOGUS'",
        ),
        (
            sign(claims(roomConfig={"agents": [{"agentName": "a", "restartPolicy": 7}]})),
            "roomConfig: unknown agents.restart_policy 7",
        ),
        (sign(claims(sub=5)), "Subject must be a string"),
    ],
)
@pytest.mark.parametrize(
    "keys", [{KEY: SECRET}, {"first": "another-secret-long-enough-for-hs256", KEY: SECRET}]
)
def test_refused_tokens_say_why(token: str, message: str, keys: dict[str, str]) -> None:
    # One configured key takes a shorter path (the token is parsed once); the reasons are the same.
    with pytest.raises(InvalidToken, match=message):
        TokenVerifier(keys).verify(token)


def test_with_several_keys_each_verifies_its_own_tokens() -> None:
    keys = {"first": "another-secret-long-enough-for-hs256", KEY: SECRET}
    several = TokenVerifier(keys)
    for key, secret in keys.items():
        assert several.verify(sign(claims(iss=key, sub=key), secret=secret)).identity == key
    with pytest.raises(InvalidToken, match="signature verification failed"):
        several.verify(sign(claims(iss="first")))


def test_sdk_token_layouts_take_the_short_path() -> None:
    # If these fell through to PyJWT they would still verify, only slowly: this is what catches it.
    python_sdk = livekit_api.AccessToken(KEY, SECRET).with_grants(livekit_api.VideoGrants(room_admin=True))
    minted = mint_token(KEY, SECRET, video=VideoGrant(room_join=True, room="r"), identity="u")
    node_layout = sign(claims(video={"roomAdmin": True}), headers={"typ": None})  # header {"alg":"HS256"}
    for token in (python_sdk.to_jwt(), minted, node_layout):
        assert verifier._plainly_valid(token) is not None, token


def outcome(verify: Any, token: str) -> Claims | str:
    try:
        return verify(token)  # type: ignore[no-any-return]
    except InvalidToken:
        return "refused"


def forge(payload: dict[str, Any], secret: str, header: dict[str, Any]) -> str:
    """A signed token with any header and claims (PyJWT's encode refuses some that a client may send)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[header["alg"]]
    segments = [base64url_encode(json.dumps(part).encode()) for part in (header, payload)]
    signing_input = b".".join(segments)
    signature = base64url_encode(hmac.new(secret.encode(), signing_input, digest).digest())
    return (signing_input + b"." + signature).decode()


# Times are drawn as offsets from the moment each example runs (the suite may run long after it was
# collected), and made into the claim then: an int, or the float or numeric string PyJWT also reads.
CURRENT = st.tuples(st.just(int), st.integers(-30, 30))  # a valid exp, nbf or iat, given the 60 s leeway
TIMES = st.one_of(
    CURRENT,
    CURRENT,
    st.tuples(st.just(int), st.integers(61, 3 * 3600)),  # beyond the leeway, ahead
    st.tuples(st.just(int), st.integers(-3 * 3600, -61)),  # and behind
    st.tuples(st.just(int), st.integers(-90, 90)),  # around the leeway
    st.tuples(st.just(float), st.floats(-120, 120)),  # PyJWT's to judge, as are the rest
    st.tuples(st.just(str), st.integers(-120, 120)),
    st.tuples(st.just(None), st.sampled_from([True, None, [], {}])),
)
TEXTS = st.one_of(
    st.text(max_size=3), st.text(max_size=3), st.text(max_size=3), st.integers(-1, 1), st.none()
)
FAULTS = {
    "wrong secret": {"secret": "wrong-secret-wrong-secret-wrong-secret"},
    "HS384": {"header": {"alg": "HS384"}},
    "other header": {"header": {"alg": "HS256", "kid": "k"}},
    "kid not a string": {"header": {"alg": "HS256", "kid": 5}},
    "critical extension": {"header": {"alg": "HS256", "crit": ["exp"], "exp": 1}},
    "odd typ": {"header": {"alg": "HS256", "typ": 5}},
    "no typ": {"header": {"alg": "HS256"}},
    "unknown issuer": {"iss": "other"},
    "issuer not a string": {"iss": 5},
    "no issuer": {"iss": None},
    "no exp": {"exp": None},
}


def stopped_at(now: int) -> type[datetime.datetime]:
    """PyJWT's `datetime`, whose `now` is `now`."""

    class Stopped(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> "Stopped":
            return cls.fromtimestamp(now, tz)

    return Stopped


@settings(max_examples=1000, deadline=None)
@given(
    optional=st.sets(st.sampled_from(["nbf", "iat", "sub", "jti", "aud"])),
    values=st.fixed_dictionaries(
        {"exp": TIMES, "nbf": TIMES, "iat": TIMES, "sub": TEXTS, "jti": TEXTS, "aud": TEXTS}
    ),
    fault=st.sampled_from([None] * len(FAULTS) + list(FAULTS)),
)
def test_short_path_agrees_with_pyjwt(optional: set[str], values: dict[str, Any], fault: str | None) -> None:
    now = int(time.time())
    for name in ("exp", "nbf", "iat"):
        kind, value = values[name]
        values[name] = value if kind is None else kind(now + value)
    change = FAULTS[fault] if fault else {}
    payload = {"iss": KEY, **{name: values[name] for name in {"exp", *optional}}}
    payload |= {k: v for k, v in change.items() if k in ("iss", "exp")}
    payload = {k: v for k, v in payload.items() if v is not None or k not in ("iss", "exp")}
    header = change.get("header", {"alg": "HS256", "typ": "JWT"})
    token = forge(payload, change.get("secret", SECRET), header)
    # Both paths read the clock: stopped, so that a second ticking between them cannot move a claim
    # drawn at a boundary (exp exactly at the leeway) from one side of it to the other.
    with (
        mock.patch.object(tokens.time, "time", return_value=float(now)),
        mock.patch.object(jwt.api_jwt, "datetime", stopped_at(now)),
    ):
        for keys in ({KEY: SECRET}, {"first": "another-secret-long-enough-for-hs256", KEY: SECRET}):
            several = TokenVerifier(keys)
            # The short path never accepts what PyJWT refuses, and accepts with the same claims.
            expected = outcome(several._verify_naming_the_fault, token)
            assert outcome(several.verify, token) == expected
            event(f"{'short path' if several._plainly_valid(token) else 'PyJWT'}, {expected == 'refused'=}")


def test_signed_tokens_are_byte_for_byte_pyjwts() -> None:
    payloads = [
        claims(),
        claims(video={"roomJoin": True, "room": "é ✓"}, attributes={"a": '\u0000"quoted"'}, metadata="{}"),
        {"nested": {"list": [1, 2.5, None, True]}, "exp": 1},
    ]
    for payload in payloads:
        for secret in (SECRET, "secret", "sécret"):
            assert encode_jwt(payload, secret) == jwt.encode(payload, secret, algorithm="HS256")


def test_job_token_is_verified_by_the_python_sdk() -> None:
    token = mint_job_token(
        KEY,
        SECRET,
        room="r",
        job_id="AJ_1",
        attempt=2,
        agent_name="bench",
        identity="agent-AJ_1",
        name="Agent",
        metadata="md",
        attributes={"a": "b"},
        permissions=VideoGrant(can_publish=True, can_subscribe=False),
    )
    sdk = livekit_api.TokenVerifier(KEY, SECRET).verify(token)
    assert (sdk.identity, sdk.name, sdk.kind, sdk.metadata) == ("agent-AJ_1", "Agent", "agent", "md")
    assert sdk.attributes == {"a": "b", "lk.agent_name": "bench"}
    assert sdk.video.room_join and sdk.video.agent and sdk.video.room == "r"
    assert sdk.video.can_publish and not sdk.video.can_subscribe
    assert verifier.verify(token).job == ("AJ_1", 2)


def test_bearer_token_from_header_or_query() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}, {}) == "abc"
    assert bearer_token({}, {"access_token": "q"}) == "q"
    assert bearer_token({"Authorization": "Bearer h"}, {"access_token": "q"}) == "h"
    assert bearer_token({}, {}) is None
    with pytest.raises(InvalidToken, match="must start with 'Bearer '"):
        bearer_token({"Authorization": "Basic abc"}, {})


def grant(**video: Any) -> Claims:
    return Claims(api_key=KEY, video=VideoGrant(**video))


def test_room_admin_needs_admin_and_the_same_room() -> None:
    require_room_admin(grant(room_admin=True, room="a"), "a")
    with pytest.raises(PermissionDenied, match="roomAdmin grant is required"):
        require_room_admin(grant(room_create=True, room="a"), "a")
    with pytest.raises(PermissionDenied, match="room grant is 'a', not 'b'"):
        require_room_admin(grant(room_admin=True, room="a"), "b")
    with pytest.raises(PermissionDenied):
        require_room_admin(grant(room_admin=True), "b")


def test_room_create_and_list_grants() -> None:
    require_room_create(grant(room_create=True))
    require_room_list(grant(room_list=True))
    with pytest.raises(PermissionDenied, match="roomCreate"):
        require_room_create(grant(room_admin=True, room="r"))
    with pytest.raises(PermissionDenied, match="roomList"):
        require_room_list(grant(room_create=True))
