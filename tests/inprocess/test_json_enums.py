"""Enum values in JSON are checked wherever JSON is read, not only in Twirp bodies: a name (or number) the
field's enum does not define is refused with the error of the protocol that carried it, instead of
silently becoming the enum's default. Unknown fields still pass.

- `/agent` text frames: a protocol violation, closed with 1008 and the reason;
- `/rtc` text frames: a bad signal frame (not acted on; `rtc.max_bad_frames` of them end the session);
- a token's `roomConfig`: an invalid token (401), through `/rtc/validate` and the Python rtc SDK.

Real workers and clients send binary frames only (docs/node-agents.md, reference/agent-worker-protocol.md),
so the text frames here are written by hand."""

import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType
from livekit import api, rtc
from livekit.protocol import models

from tests.inprocess.conftest import AppServer, StartApp
from tests.protocol_worker import DEADLINE, Client, unique

POLICY_VIOLATION = 1008
MAX_BAD_FRAMES = 3
SETTINGS = {
    "agents": {"violation_close_delay": 0},
    "rtc": {"ice_addresses": ["127.0.0.1"], "max_bad_frames": MAX_BAD_FRAMES},
}


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame = await ws.receive(timeout=DEADLINE)
    assert frame.type is WSMsgType.TEXT, f"expected a JSON text frame, got {frame.type.name} {frame.data!r}"
    message: dict[str, Any] = json.loads(frame.data)
    return message


async def close_of(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """The server's Close frame: its code and reason (frames before it are skipped)."""
    deadline = time.monotonic() + DEADLINE
    while (
        frame := await ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
    ).type is not WSMsgType.CLOSE:
        assert frame.type in (WSMsgType.TEXT, WSMsgType.BINARY), f"no Close frame: {frame}"
    return frame.data, frame.extra


# /agent


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({"register": {"agentName": "{name}", "type": "JT_BOGUS"}}, "unknown register.type 'JT_BOGUS'"),
        ({"register": {"agentName": "{name}", "type": 7}}, "unknown register.type 7"),
    ],
    ids=["by-name", "by-number"],
)
async def test_a_json_register_with_an_unknown_worker_type_is_a_violation(
    start_app: StartApp, session: aiohttp.ClientSession, frame: dict[str, Any], reason: str
) -> None:
    """Before, `"type": "JT_BOGUS"` registered a JT_ROOM worker."""
    server = await start_app(SETTINGS)
    name = unique("json-type")
    ws = await Client(server, session).connect()
    await ws.send_str(json.dumps(frame).replace("{name}", name))
    code, text = await close_of(ws)
    assert code == POLICY_VIOLATION
    assert text.startswith(f"invalid WorkerMessage: {reason}: expected one of JT_ROOM"), text
    assert len(text.encode()) <= 123, "a Close frame's reason fits in 123 bytes"
    assert server.workers_named(name) == []


async def test_a_json_job_update_with_an_unknown_status_is_a_violation(
    start_app: StartApp, session: aiohttp.ClientSession
) -> None:
    server = await start_app(SETTINGS)
    client = Client(server, session)
    name = unique("json-status")
    ws = await client.connect()
    # Unknown fields pass, as in a binary frame: a newer worker's additions do not break it.
    await ws.send_str(json.dumps({"register": {"agentName": name, "someFutureField": {"x": 1}}}))
    worker_id = (await receive_json(ws))["register"]["workerId"]
    assert server.workers_named(name) == [worker_id]
    room = unique("room")
    await client.create_dispatch(room, name)
    job_id = (await receive_json(ws))["availability"]["job"]["id"]
    await ws.send_str(json.dumps({"availability": {"jobId": job_id, "available": True}}))
    assert (await receive_json(ws))["assignment"]["job"]["id"] == job_id

    await ws.send_str(json.dumps({"updateJob": {"jobId": job_id, "status": "JS_DONE"}}))
    code, text = await close_of(ws)
    assert code == POLICY_VIOLATION and "unknown update_job.status 'JS_DONE'" in text, text
    # Not read as JS_PENDING (the default) and ignored, which kept the worker: it is gone.
    assert server.workers_named(name) == []


# /rtc


async def raw_json_join(server: AppServer, session: aiohttp.ClientSession, room: str, identity: str) -> Any:
    """A hand-driven signalling client that speaks protojson text, joined to `room`."""
    token = api.AccessToken(server.api_key, server.api_secret).with_identity(identity)
    token = token.with_grants(api.VideoGrants(room_join=True, room=room))
    ws = await session.ws_connect(
        f"{server.ws_url}/rtc?protocol=16&auto_subscribe=1&access_token={token.to_jwt()}"
    )
    first = await ws.receive(timeout=DEADLINE)  # binary: the server speaks JSON once the client does
    assert first.type is WSMsgType.BINARY
    return ws


async def signal_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    """JSON signal responses up to the first of `kind`, pinging so that each wait has an answer."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        await ws.send_str(json.dumps({"ping": str(int(time.time() * 1000))}))
        while (message := await receive_json(ws)) and "pong" not in message:
            seen.append(message)
            if kind in message:
                return seen
        if kind == "pong":
            return seen
    raise AssertionError(f"no {kind} within {DEADLINE}s: {seen}")


def add_track(cid: str, source: str) -> str:
    return json.dumps({"addTrack": {"cid": cid, "name": "mic", "type": "AUDIO", "source": source}})


async def test_json_signal_frames_with_unknown_enum_names_are_bad_frames(
    start_app: StartApp, session: aiohttp.ClientSession
) -> None:
    server = await start_app(SETTINGS)
    ws = await raw_json_join(server, session, unique("room"), "json-client")
    await ws.send_str(add_track("laser", "LASER"))  # before, published with source UNKNOWN
    await ws.send_str(add_track("mic", "MICROPHONE"))
    seen = await signal_until(ws, "trackPublished")
    assert [m["trackPublished"]["cid"] for m in seen if "trackPublished" in m] == ["mic"]
    assert seen[-1]["trackPublished"]["track"]["source"] == "MICROPHONE"

    for n in range(MAX_BAD_FRAMES):  # a run of them ends the session, as any malformed frames do
        await ws.send_str(add_track(f"laser-{n}", "LASER"))
    seen = await signal_until(ws, "leave")
    assert not [m for m in seen if "trackPublished" in m]
    assert seen[-1]["leave"]["reason"] == models.DisconnectReason.Name(models.STATE_MISMATCH)


# roomConfig


def room_config_token(server: AppServer, room: str, agents: list[dict[str, Any]]) -> str:
    """A join token whose roomConfig is written by hand: no SDK writes an enum name its protocol lacks."""
    now = int(time.time())
    claims = {
        "iss": server.api_key,
        "sub": "hand-made",
        "nbf": now,
        "exp": now + 600,
        "video": {"roomJoin": True, "room": room},
        "roomConfig": {"agents": agents},
    }
    return jwt.encode(claims, server.api_secret, algorithm="HS256")


async def test_a_token_room_config_with_an_unknown_enum_name_is_an_invalid_token(
    start_app: StartApp, session: aiohttp.ClientSession
) -> None:
    server = await start_app(SETTINGS)
    room = unique("room")
    good = room_config_token(server, room, [{"agentName": "x", "restartPolicy": "JRP_NEVER"}])
    bad = room_config_token(server, room, [{"agentName": "x", "restartPolicy": "JRP_SOMETIMES"}])
    async with session.get(f"{server.http_url}/rtc/validate", params={"access_token": good}) as response:
        assert response.status == 200, await response.text()
    async with session.get(f"{server.http_url}/rtc/validate", params={"access_token": bad}) as response:
        text = await response.text()
        assert response.status == 401, text
        assert "roomConfig: unknown agents.restart_policy 'JRP_SOMETIMES': expected one of" in text
    assert room not in server.engine.rooms


async def test_the_python_sdk_cannot_join_with_an_unknown_restart_policy_in_its_room_config(
    start_app: StartApp,
) -> None:
    """livekit-api writes an enum value its protocol lacks as a number; the server refuses it as it refuses
    the name, and no room is created with the default policy in its place."""
    server = await start_app(SETTINGS)
    room = unique("room")
    dispatch = api.RoomAgentDispatch(agent_name="x")
    dispatch.restart_policy = 99  # type: ignore[assignment]  # what a newer or buggy caller can put there
    token = (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity("alice")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_room_config(api.RoomConfiguration(agents=[dispatch]))
        .to_jwt()
    )
    assert (
        jwt.decode(token, options={"verify_signature": False})["roomConfig"]["agents"][0]["restartPolicy"]
        == 99
    )
    participant = rtc.Room()
    with pytest.raises(
        rtc.ConnectError,
        match=r"401 Unauthorized - invalid token: roomConfig: unknown agents\.restart_policy 99",
    ):
        await participant.connect(server.ws_url, token)
    assert room not in server.engine.rooms
