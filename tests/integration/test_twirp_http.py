"""Raw HTTP against the Twirp surface, as `curl` and hand-written clients send it: formats, errors, auth."""

import asyncio
import base64
import json
import subprocess
import time
from typing import Any

import aiohttp
import jwt
import pytest
from livekit.protocol import agent_dispatch

from tests.conftest import Server

DISPATCH = "/twirp/livekit.AgentDispatchService/"
ROOM = "/twirp/livekit.RoomService/"
ANSWER_DEADLINE = 10.0


async def post(
    server: Server,
    path: str,
    body: bytes | str | dict[str, Any],
    token: str | None = None,
    content_type: str = "application/json",
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": content_type, **headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.http_url + path, data=data, headers=all_headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def admin(server: Server, room: str) -> str:
    return server.token(room_admin=True, room=room)


def twirp_error(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str, str]:
    assert headers["Content-Type"] == "application/json", "Node's SDK reads errors only with this exact type"
    error = json.loads(body)
    return status, error["code"], error["msg"]


async def test_health_answers_ok(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.http_url + "/") as response:
        assert response.status == 200 and await response.text() == "OK"


def test_curl_example_from_the_openvidu_docs(server: Server) -> None:
    token = admin(server, "my-room")
    result = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", f"{server.http_url}{DISPATCH}CreateDispatch",
            "-H", f"Authorization: Bearer {token}",
            "-H", "Content-Type: application/json",
            "-d", '{"agent_name": "AGENT_NAME", "room": "my-room"}',
        ],
        capture_output=True,
        check=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    dispatch = json.loads(result.stdout)
    assert dispatch["id"].startswith("AD_") and dispatch["agent_name"] == "AGENT_NAME"
    assert dispatch["room"] == "my-room"


async def test_json_response_is_proto3_json_as_livekit_writes_it(server: Server) -> None:
    status, headers, body = await post(
        server,
        DISPATCH + "CreateDispatch",
        {"agent_name": "a", "room": "json-room"},
        admin(server, "json-room"),
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    dispatch = json.loads(body)
    # snake_case names, unpopulated fields emitted, enums by name, int64 as strings
    assert dispatch["metadata"] == "" and dispatch["attributes"] == {} and dispatch["deployment"] == ""
    assert dispatch["restart_policy"] == "JRP_ON_FAILURE"
    assert isinstance(dispatch["state"]["created_at"], str) and int(dispatch["state"]["created_at"]) > 0
    assert dispatch["state"]["jobs"][0]["type"] == "JT_ROOM"
    assert dispatch["state"]["jobs"][0]["state"]["status"] == "JS_PENDING"


async def test_camel_case_and_unknown_fields_are_accepted(server: Server) -> None:
    status, _, body = await post(
        server,
        DISPATCH + "CreateDispatch",
        {"agentName": "camel", "room": "camel-room", "restartPolicy": "JRP_NEVER", "someNewField": 1},
        admin(server, "camel-room"),
        content_type="Application/JSON; charset=UTF-8",
    )
    assert status == 200
    assert json.loads(body)["agent_name"] == "camel" and json.loads(body)["restart_policy"] == "JRP_NEVER"


async def test_protobuf_request_gets_a_protobuf_response(server: Server) -> None:
    request = agent_dispatch.CreateAgentDispatchRequest(agent_name="pb", room="pb-room")
    status, headers, body = await post(
        server,
        DISPATCH + "CreateDispatch",
        request.SerializeToString(),
        admin(server, "pb-room"),
        content_type="application/protobuf",
    )
    assert status == 200 and headers["Content-Type"] == "application/protobuf"
    assert agent_dispatch.AgentDispatch.FromString(body).agent_name == "pb"


async def test_token_in_the_access_token_query_parameter(server: Server) -> None:
    path = f"{DISPATCH}ListDispatch?access_token={admin(server, 'q-room')}"
    status, _, body = await post(server, path, {"room": "q-room"})
    assert status == 200 and json.loads(body) == {"agent_dispatches": []}


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"{not json", "application/json", "the json request could not be decoded"),
        (b'{"room": 5}', "application/json", "the json request could not be decoded"),
        (b'{"room": "r", "metadata": {"a": 1}}', "application/json", "could not be decoded"),
        (b"[1, 2]", "application/json", "the json request could not be decoded"),
        (b"\xff\xfe\xfd", "application/json", "the json request could not be decoded"),
        (b"\x0a\xff\xff\xff", "application/protobuf", "the protobuf request could not be decoded"),
    ],
)
async def test_malformed_bodies_are_refused_with_malformed(
    server: Server, body: bytes, content_type: str, fragment: str
) -> None:
    response = await post(server, DISPATCH + "CreateDispatch", body, admin(server, "r"), content_type)
    status, code, msg = twirp_error(*response)
    assert (status, code) == (400, "malformed") and fragment in msg


@pytest.mark.parametrize("policy", ['"BOGUS"', "99", '"99"', "-1"])
async def test_an_unknown_enum_value_is_invalid_argument_by_name_as_by_number(
    server: Server, policy: str
) -> None:
    body = f'{{"room": "enum-room", "agent_name": "a", "restart_policy": {policy}}}'.encode()
    response = await post(server, DISPATCH + "CreateDispatch", body, admin(server, "enum-room"))
    status, code, msg = twirp_error(*response)
    assert (status, code) == (400, "invalid_argument") and "unknown restart_policy" in msg
    request = agent_dispatch.CreateAgentDispatchRequest(room="enum-room", agent_name="a")
    request.restart_policy = 99  # type: ignore[assignment]
    response = await post(
        server, DISPATCH + "CreateDispatch", request.SerializeToString(), admin(server, "enum-room"),
        "application/protobuf",
    )  # fmt: skip
    assert twirp_error(*response)[:2] == (400, "invalid_argument")
    listed = await post(server, DISPATCH + "ListDispatch", {"room": "enum-room"}, admin(server, "enum-room"))
    assert json.loads(listed[2])["agent_dispatches"] == [], "nothing was dispatched"


async def test_wrong_content_type_is_refused(server: Server) -> None:
    response = await post(server, DISPATCH + "ListDispatch", b"room=r", admin(server, "r"), "text/plain")
    status, code, msg = twirp_error(*response)
    assert (status, code) == (400, "malformed") and 'unexpected Content-Type: "text/plain"' in msg


async def test_routing_errors_are_bad_route(server: Server) -> None:
    for path in (DISPATCH + "Nope", "/twirp/livekit.NoService/CreateDispatch", "/twirp/whatever"):
        status, code, msg = twirp_error(*await post(server, path, {}, admin(server, "r")))
        assert (status, code) == (404, "bad_route") and "no handler for path" in msg
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.http_url + DISPATCH + "ListDispatch") as r,
    ):
        status, code, msg = twirp_error(r.status, dict(r.headers), await r.read())
    assert (status, code) == (404, "bad_route") and 'unsupported method "GET"' in msg


async def test_oversized_bodies_are_refused_without_reading_them(server: Server) -> None:
    limit = 10 * 1024 * 1024
    token = admin(server, "big")
    # A declared size over the limit is refused before the body is read: the client sends only the head
    # and a little of the body, and still gets its answer. (A client that pushes all 10 MB may instead see
    # the connection reset under it, as the server does not read what it refused.)
    host, port = server.http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {DISPATCH}ListDispatch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {limit + 1}\r\n\r\n"
    )
    writer.write(head.encode() + b"x" * 1024)
    await writer.drain()
    answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_DEADLINE)
    status_line, *header_lines = answer_head.decode().split("\r\n")
    length = next(int(h.split(":")[1]) for h in header_lines if h.lower().startswith("content-length:"))
    error = json.loads(await asyncio.wait_for(reader.readexactly(length), ANSWER_DEADLINE))
    writer.close()
    assert status_line.split()[1] == "413", answer_head
    assert error["code"] == "malformed" and "request body too large" in error["msg"]

    async def chunks():  # no Content-Length: the limit must hold while reading too
        for _ in range(11):
            yield b" " * (1024 * 1024)

    response = await post(server, DISPATCH + "ListDispatch", chunks(), token)  # type: ignore[arg-type]
    assert twirp_error(*response)[0] == 413
    ok = await post(server, DISPATCH + "ListDispatch", {"room": "big"}, token)
    assert ok[0] == 200, "the server keeps serving after refusing a large body"


async def test_cors_preflight(server: Server) -> None:
    headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.options(server.http_url + DISPATCH + "CreateDispatch", headers=headers) as response,
    ):
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "authorization,content-type"


# The permission matrix: every method by missing / forged / expired / wrong room / wrong grant.

ROOM_SCOPED = {
    DISPATCH + "CreateDispatch": {"room": "room-a", "agent_name": "x"},
    DISPATCH + "ListDispatch": {"room": "room-a"},
    DISPATCH + "DeleteDispatch": {"room": "room-a", "dispatch_id": "AD_x"},
    ROOM + "UpdateRoomMetadata": {"room": "room-a", "metadata": "m"},
    ROOM + "ListParticipants": {"room": "room-a"},
    ROOM + "GetParticipant": {"room": "room-a", "identity": "u"},
    ROOM + "RemoveParticipant": {"room": "room-a", "identity": "u"},
    ROOM + "UpdateSubscriptions": {"room": "room-a", "identity": "u", "track_sids": ["TR_x"]},
    ROOM + "PerformRpc": {"room": "room-a", "destination_identity": "u", "method": "m"},
}
SERVER_SCOPED = {
    ROOM + "CreateRoom": ({"name": "room-a"}, "room_create"),
    ROOM + "DeleteRoom": ({"room": "room-a"}, "room_create"),
    ROOM + "ListRooms": ({}, "room_list"),
}


def expired(server: Server, **grants: Any) -> str:
    now = int(time.time())
    payload = {"iss": server.api_key, "nbf": now - 600, "exp": now - 300, "video": {"roomAdmin": True}}
    payload["video"].update({"room": "room-a", **grants})
    return jwt.encode(payload, server.api_secret, algorithm="HS256")


def forged(server: Server) -> str:
    now = int(time.time())
    payload = {"iss": server.api_key, "exp": now + 60, "video": {"roomAdmin": True, "roomCreate": True,
               "roomList": True, "room": "room-a"}}  # fmt: skip
    return jwt.encode(payload, "not-the-secret-not-the-secret-not-the-secret", algorithm="HS256")


def matrix() -> list[tuple[str, dict[str, Any], str, str]]:
    cases = []
    for path, body in ROOM_SCOPED.items():
        cases += [
            (path, body, "missing", "unauthenticated"),
            (path, body, "forged", "unauthenticated"),
            (path, body, "expired", "unauthenticated"),
            (path, body, "wrong-room", "permission_denied"),
            (path, body, "wrong-grant", "permission_denied"),
        ]
    for path, (body, _) in SERVER_SCOPED.items():
        cases += [
            (path, body, "missing", "unauthenticated"),
            (path, body, "forged", "unauthenticated"),
            (path, body, "expired", "unauthenticated"),
            (path, body, "wrong-grant", "permission_denied"),
        ]
    return cases


@pytest.mark.parametrize(("path", "body", "case", "code"), matrix())
async def test_permission_matrix(
    server: Server, path: str, body: dict[str, Any], case: str, code: str
) -> None:
    tokens = {
        "missing": None,
        "forged": forged(server),
        "expired": expired(server, roomCreate=True, roomList=True),
        "wrong-room": server.token(room_admin=True, room="room-b"),
        # admin of the right room, but not the grant this method needs (or only roomJoin for admin methods)
        "wrong-grant": server.token(room_join=True, room="room-a")
        if path in ROOM_SCOPED
        else server.token(room_admin=True, room="room-a"),
    }
    status, got_code, msg = twirp_error(*await post(server, path, body, tokens[case]))
    assert got_code == code and status == {"unauthenticated": 401, "permission_denied": 403}[code]
    assert msg, "the error says why"
    # Nothing acted on room-a: no room was created by a refused CreateDispatch or CreateRoom.
    status, _, listed = await post(
        server, ROOM + "ListRooms", {"names": ["room-a"]}, server.token(room_list=True)
    )
    assert json.loads(listed)["rooms"] == []


@pytest.mark.parametrize("path", [*ROOM_SCOPED, *SERVER_SCOPED])
async def test_the_right_grant_passes(server: Server, path: str) -> None:
    if path in ROOM_SCOPED:
        body, token = ROOM_SCOPED[path], admin(server, "room-z")
        body = {**body, "room": "room-z"}
    else:
        body, grant = SERVER_SCOPED[path]
        token = server.token(**{grant: True})
        body = {k: "room-z" for k in body}
    status, _, _ = await post(server, path, body, token)
    assert status not in (401, 403)


async def test_bad_authorization_header_is_unauthenticated(server: Server) -> None:
    response = await post(server, ROOM + "ListRooms", {}, None, Authorization="Basic dXNlcjpwYXNz")
    status, code, msg = twirp_error(*response)
    assert (status, code) == (401, "unauthenticated") and "must start with 'Bearer '" in msg


async def test_values_from_requests_reach_the_log_escaped(server: Server) -> None:
    forged_line = "2026-01-01T00:00:00.000Z ERROR switchboard.api FORGED"
    token = server.token(room_create=True, room_list=True)
    # U+2028 (a line separator for many readers) in the path; a newline in the token's header
    await post(server, ROOM + "Nope%E2%80%A8" + forged_line.replace(" ", "%20") + "-path", {}, token)
    header = json.dumps({"alg": f"x\n{forged_line}-alg", "typ": "JWT"}).encode()
    header_token = ".".join(base64.urlsafe_b64encode(p).decode().rstrip("=") for p in (header, b"{}", b"sig"))
    await post(server, ROOM + "ListRooms", {}, header_token)
    join = server.join_token("log-room", "alice")
    query = {"access_token": join, "sdk": f"js\r\n{forged_line}-sdk", "protocol": "16"}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.ws_url + "/rtc", params=query)
        await ws.receive()  # the join response
        await ws.close()
    log = server.log()  # each was logged before its answer was sent
    assert f"Nope\\u2028{forged_line}-path" in log and f"\\n{forged_line}-alg" in log
    assert f"sdk=js\\r\\n{forged_line}-sdk" in log
    assert not any(line.startswith(forged_line) for line in log.splitlines())
