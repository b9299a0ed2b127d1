"""The official Node `livekit-server-sdk` (unmodified) against a real Switchboard server.

Each test runs one scenario of `tests/node/twirp_scenarios.mjs`, which prints what the SDK observed as one
JSON object (protobuf-es JSON: camelCase, defaults emitted, int64 as strings, enums by name). Where it helps,
the result is cross-checked with a raw Twirp JSON request from Python.
"""

import json
import re
import time
from typing import Any

import aiohttp

from tests.conftest import Server
from tests.node_clients import run_scenario

# LiveKit ids: a type prefix and 12 characters of the base57 shortuuid alphabet.
BASE57 = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DISPATCH_ID = re.compile(rf"^AD_[{BASE57}]{{12}}$")
ROOM_SID = re.compile(rf"^RM_[{BASE57}]{{12}}$")


async def twirp_json(
    server: Server, service: str, method: str, body: dict[str, Any], token: str
) -> tuple[int, str, dict[str, Any]]:
    """A raw Twirp JSON call: (status, exact Content-Type, decoded body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.http_url}/twirp/livekit.{service}/{method}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), json.loads(await response.read())


def assert_server_error(observed: dict[str, Any], *, code: str, status: int, name: str) -> dict[str, Any]:
    """The call failed with a ServerError carrying the Twirp code (only read by the SDK from exact JSON)."""
    assert observed["ok"] is False, (
        f"expected the call to fail with {code}, it returned {observed.get('value')}"
    )
    error: dict[str, Any] = observed["error"]
    assert error["isServerError"] is True, error
    assert error["code"] == code, error
    assert error["status"] == status, error
    assert error["name"] == name, error
    assert error["message"], error
    assert not error["message"].lstrip().startswith("{"), f"the SDK did not parse the Twirp error: {error}"
    return error


def assert_recent(seconds: str, milliseconds: str) -> None:
    """Room creation times: int64 as strings, seconds and milliseconds agreeing, close to now."""
    assert abs(int(seconds) - time.time()) < 120
    assert int(milliseconds) // 1000 == int(seconds)


async def test_dispatch_lifecycle(server: Server) -> None:
    result = await run_scenario(server, "dispatch-lifecycle")
    room = result["room"]

    created = result["created"]
    assert DISPATCH_ID.match(created["id"]), created["id"]
    assert created["agentName"] == "agent-x"
    assert created["room"] == room
    assert created["metadata"] == "m1"
    assert created["restartPolicy"] == "JRP_ON_FAILURE"
    assert created["deployment"] == ""
    assert created["attributes"] == {}
    assert int(created["state"]["createdAt"]) > 0

    # CreateDispatch created the missing room, which got the implicit automatic dispatch as well.
    listed = result["listed"]
    assert len(listed) == 2, listed
    assert sorted(d["agentName"] for d in listed) == ["", "agent-x"]
    assert all(DISPATCH_ID.match(d["id"]) and d["room"] == room for d in listed)
    assert len({d["id"] for d in listed}) == 2
    explicit = next(d for d in listed if d["agentName"] == "agent-x")
    implicit = next(d for d in listed if d["agentName"] == "")
    assert explicit["id"] == created["id"]
    assert explicit["metadata"] == "m1"
    assert implicit["metadata"] == ""

    got = result["got"]
    assert got is not None
    assert (got["id"], got["agentName"], got["metadata"]) == (created["id"], "agent-x", "m1")
    assert got["room"] == room

    [auto_room] = result["roomsAfterCreate"]
    assert auto_room["name"] == room
    assert ROOM_SID.match(auto_room["sid"]), auto_room["sid"]
    # A room made by CreateDispatch has the server defaults (the fixture configures 300 s / 20 s).
    assert auto_room["emptyTimeout"] == 300
    assert auto_room["departureTimeout"] == 20
    assert auto_room["numParticipants"] == 0
    assert_recent(auto_room["creationTime"], auto_room["creationTimeMs"])

    assert result["deleteReturned"] is None
    assert [d["id"] for d in result["listedAfterDelete"]] == [implicit["id"]]
    assert result["gotAfterDeleteIsUndefined"] is True

    # The Python side sees the same state over raw Twirp JSON (snake_case, as LiveKit writes it).
    token = server.token(room_admin=True, room=room)
    status, content_type, body = await twirp_json(
        server, "AgentDispatchService", "ListDispatch", {"room": room}, token
    )
    assert (status, content_type) == (200, "application/json")
    assert [(d["id"], d["agent_name"]) for d in body["agent_dispatches"]] == [(implicit["id"], "")]


async def test_room_lifecycle(server: Server) -> None:
    result = await run_scenario(server, "room-lifecycle")
    name = result["room"]

    created = result["created"]
    assert created["name"] == name
    assert ROOM_SID.match(created["sid"]), created["sid"]
    assert created["emptyTimeout"] == 10
    assert created["departureTimeout"] == 5
    assert created["maxParticipants"] == 5
    assert created["metadata"] == "rm"
    assert created["numParticipants"] == 0
    assert_recent(created["creationTime"], created["creationTimeMs"])

    assert name in result["listedAllNames"]
    [listed] = result["listedByName"]
    assert listed["sid"] == created["sid"]
    assert (listed["name"], listed["metadata"], listed["emptyTimeout"]) == (name, "rm", 10)
    assert (listed["departureTimeout"], listed["maxParticipants"]) == (5, 5)

    updated = result["updated"]
    assert (updated["sid"], updated["name"], updated["metadata"]) == (created["sid"], name, "new")
    assert [r["metadata"] for r in result["listedAfterUpdate"]] == ["new"]

    assert result["participants"] == []

    # `agents` was given, so the room has exactly that dispatch and no implicit automatic one.
    [dispatch] = result["dispatches"]
    assert DISPATCH_ID.match(dispatch["id"]), dispatch["id"]
    assert (dispatch["agentName"], dispatch["metadata"], dispatch["room"]) == ("a1", "am", name)

    assert result["deleteReturned"] is None
    assert result["listedAfterDelete"] == []
    # The deleted room's dispatch stays listed (room.history_ttl), as it ended.
    [ended] = result["dispatchesAfterDelete"]
    assert ended["id"] == dispatch["id"] and ended["state"]["deletedAt"] not in (None, "0", 0)

    status, content_type, body = await twirp_json(
        server, "RoomService", "ListRooms", {"names": [name]}, server.token(room_list=True)
    )
    assert (status, content_type) == (200, "application/json")
    assert body["rooms"] == []


async def test_error_delete_unknown_dispatch(server: Server) -> None:
    result = await run_scenario(server, "error-delete-unknown-dispatch")
    assert_server_error(result["result"], code="not_found", status=404, name="Not Found")
    # The failed delete left the room's dispatches alone: the explicit one and the implicit one.
    assert result["existingId"] in result["listedAfterIds"]
    assert len(result["listedAfterIds"]) == 2

    # The wire detail that makes `e.code` work in Node: Content-Type exactly application/json.
    token = server.token(room_admin=True, room=result["room"])
    status, content_type, body = await twirp_json(
        server,
        "AgentDispatchService",
        "DeleteDispatch",
        {"dispatchId": "AD_doesnotexist", "room": result["room"]},
        token,
    )
    assert (status, content_type) == (404, "application/json")
    assert body["code"] == "not_found"
    assert body["msg"]


async def test_error_delete_unknown_room(server: Server) -> None:
    result = await run_scenario(server, "error-delete-unknown-room")
    assert_server_error(result["result"], code="not_found", status=404, name="Not Found")


async def test_error_metadata_too_large(server: Server) -> None:
    result = await run_scenario(server, "error-metadata-too-large")
    error = assert_server_error(result["result"], code="invalid_argument", status=400, name="Bad Request")
    assert "metadata" in error["message"]
    # The refused request created neither the dispatch nor the room.
    assert result["listedAfter"] == []


async def test_error_wrong_secret(server: Server) -> None:
    result = await run_scenario(server, "error-wrong-secret")
    assert_server_error(result["createDispatch"], code="unauthenticated", status=401, name="Unauthorized")
    assert_server_error(result["listRooms"], code="unauthenticated", status=401, name="Unauthorized")
    assert result["roomsAfter"] == []


async def test_list_dispatch_missing_room(server: Server) -> None:
    result = await run_scenario(server, "list-dispatch-missing-room")
    listed = result["result"]
    assert listed["ok"] is True, listed
    assert listed["value"] == []
    # LiveKit itself blocks ≈3 s and answers 503 here; Switchboard answers an empty list at once.
    assert listed["elapsedMs"] < 1500, listed
    got = result["getResult"]
    assert got["ok"] is True, got
    assert got["value"] is None
    # Listing is read-only: it did not create the room.
    assert result["roomsAfter"] == []
