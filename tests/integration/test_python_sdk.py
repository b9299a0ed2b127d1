"""The official Python `livekit-api` (protobuf over Twirp) against a running server: every method we serve."""

import time
import uuid

import pytest
from livekit import api

from tests.conftest import Server


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def test_dispatch_create_list_get_delete(lkapi: api.LiveKitAPI) -> None:
    room = room_name()
    before = time.time_ns()
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name="AGENT_NAME",
            room=room,
            metadata='{"user": 1}',
            attributes={"k": "v"},
            restart_policy=api.JRP_NEVER,
            deployment="blue",
        )
    )
    assert dispatch.id.startswith("AD_") and len(dispatch.id) == 15
    assert (dispatch.agent_name, dispatch.room, dispatch.metadata) == ("AGENT_NAME", room, '{"user": 1}')
    assert dict(dispatch.attributes) == {"k": "v"} and dispatch.deployment == "blue"
    assert dispatch.restart_policy == api.JRP_NEVER
    assert before <= dispatch.state.created_at <= time.time_ns()

    listed = await lkapi.agent_dispatch.list_dispatch(room)
    by_name = {d.agent_name: d for d in listed}
    assert set(by_name) == {"AGENT_NAME", ""}, "a room created by CreateDispatch gets the automatic dispatch"
    mine = by_name["AGENT_NAME"]
    assert mine.id == dispatch.id and mine.metadata == '{"user": 1}'
    [job] = mine.state.jobs
    assert job.id.startswith("AJ_") and job.type == api.JT_ROOM and job.dispatch_id == dispatch.id
    assert job.state.status == api.JS_PENDING and job.room.name == room and job.room.sid.startswith("RM_")

    got = await lkapi.agent_dispatch.get_dispatch(dispatch.id, room)
    assert got is not None and got.id == dispatch.id
    assert await lkapi.agent_dispatch.get_dispatch("AD_unknown", room) is None

    deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch.id, room)
    assert deleted.id == dispatch.id and deleted.state.deleted_at > 0
    assert deleted.state.jobs[0].state.status == api.JS_FAILED
    assert deleted.state.jobs[0].state.error == "terminated: dispatch deleted"
    assert [d.agent_name for d in await lkapi.agent_dispatch.list_dispatch(room)] == [""]


async def test_a_closed_rooms_dispatches_stay_listed_as_they_ended(lkapi: api.LiveKitAPI) -> None:
    room = room_name()
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="nobody-serves-this", room=room)
    )
    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))

    listed = {d.id: d for d in await lkapi.agent_dispatch.list_dispatch(room)}
    assert dispatch.id in listed and len(listed) == 2, "with the implicit automatic dispatch"
    [job] = listed[dispatch.id].state.jobs
    assert job.state.status == api.JS_FAILED and job.state.ended_at > 0
    assert job.state.error == "terminated: room closed (deleted by API request)"
    assert job.room.name == room and listed[dispatch.id].state.deleted_at > 0
    got = await lkapi.agent_dispatch.get_dispatch(dispatch.id, room)
    assert got is not None and got.state.jobs[0].state.error == job.state.error
    with pytest.raises(api.TwirpError) as raised:  # the closed room's dispatches can no longer change
        await lkapi.agent_dispatch.delete_dispatch(dispatch.id, room)
    assert raised.value.code == "not_found"
    assert room not in {r.name for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms}


async def test_dispatch_methods_on_a_missing_room_answer_at_once(lkapi: api.LiveKitAPI) -> None:
    started = time.monotonic()
    assert await lkapi.agent_dispatch.list_dispatch("never-created") == []
    with pytest.raises(api.TwirpError) as raised:
        await lkapi.agent_dispatch.delete_dispatch("AD_x", "never-created")
    assert (raised.value.code, raised.value.status) == ("not_found", 404)
    assert time.monotonic() - started < 2.0, "LiveKit hangs 3 s here; Switchboard must not"


async def test_create_room_with_agents_and_settings(lkapi: api.LiveKitAPI) -> None:
    name = room_name()
    room = await lkapi.room.create_room(
        api.CreateRoomRequest(
            name=name,
            empty_timeout=30,
            departure_timeout=7,
            max_participants=5,
            metadata="rm",
            agents=[api.RoomAgentDispatch(agent_name="captions", metadata="am")],
        )
    )
    assert room.sid.startswith("RM_") and room.name == name
    assert (room.empty_timeout, room.departure_timeout, room.max_participants, room.metadata) == (
        30,
        7,
        5,
        "rm",
    )
    assert abs(room.creation_time - time.time()) < 60 and room.creation_time_ms // 1000 == room.creation_time
    [dispatch] = await lkapi.agent_dispatch.list_dispatch(name)
    assert (dispatch.agent_name, dispatch.metadata) == ("captions", "am")

    again = await lkapi.room.create_room(api.CreateRoomRequest(name=name, metadata="ignored"))
    assert again.sid == room.sid and again.metadata == "rm"


async def test_list_update_and_delete_rooms(lkapi: api.LiveKitAPI) -> None:
    names = [room_name() for _ in range(3)]
    for name in names:
        await lkapi.room.create_room(api.CreateRoomRequest(name=name))
    all_rooms = {r.name: r for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms}
    assert set(names) <= set(all_rooms)
    assert all(all_rooms[n].num_participants == 0 for n in names)
    some = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[names[0], names[2], "nope"]))
    assert [r.name for r in some.rooms] == [names[0], names[2]]

    updated = await lkapi.room.update_room_metadata(
        api.UpdateRoomMetadataRequest(room=names[1], metadata="new")
    )
    assert updated.metadata == "new" and updated.name == names[1]

    await lkapi.room.delete_room(api.DeleteRoomRequest(room=names[1]))
    remaining = await lkapi.room.list_rooms(api.ListRoomsRequest(names=names))
    assert [r.name for r in remaining.rooms] == [names[0], names[2]]
    # Its dispatches stay listed as they ended (room.history_ttl), the room itself is gone.
    [ended] = await lkapi.agent_dispatch.list_dispatch(names[1])
    assert ended.state.deleted_at > 0 and ended.state.jobs[0].state.status == api.JS_FAILED
    with pytest.raises(api.TwirpError) as raised:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=names[1]))
    assert raised.value.code == "not_found" and "room does not exist" in raised.value.message


async def test_participant_methods_on_a_room_without_participants(lkapi: api.LiveKitAPI) -> None:
    name = room_name()
    await lkapi.room.create_room(api.CreateRoomRequest(name=name))
    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=name))
    assert list(listed.participants) == []
    unknown_room = await lkapi.room.list_participants(api.ListParticipantsRequest(room="no-such-room"))
    assert list(unknown_room.participants) == []
    for call in (lkapi.room.get_participant, lkapi.room.remove_participant):
        with pytest.raises(api.TwirpError) as raised:
            await call(api.RoomParticipantIdentity(room=name, identity="ghost"))
        assert (raised.value.code, raised.value.status) == ("not_found", 404)
        assert raised.value.message == "participant does not exist"


async def test_errors_reach_the_sdk_with_their_twirp_code(lkapi: api.LiveKitAPI, server: Server) -> None:
    with pytest.raises(api.TwirpError) as too_big:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="a", room=room_name(), metadata="x" * (512 * 1024 + 1))
        )
    assert (too_big.value.code, too_big.value.status) == ("invalid_argument", 400)
    assert "metadata size exceeds limits" in too_big.value.message

    with pytest.raises(api.TwirpError) as bad_deployment:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="a", room=room_name(), deployment="a_b")
        )
    assert bad_deployment.value.code == "invalid_argument"

    async with api.LiveKitAPI(server.http_url, server.api_key, "a-wrong-secret-of-sufficient-length!") as bad:
        with pytest.raises(api.TwirpError) as unauthenticated:
            await bad.agent_dispatch.list_dispatch("r")
    assert (unauthenticated.value.code, unauthenticated.value.status) == ("unauthenticated", 401)
    assert "signature verification failed" in unauthenticated.value.message

    async with api.LiveKitAPI(server.http_url, "unknown-key", server.api_secret) as bad:
        with pytest.raises(api.TwirpError) as unknown_key:
            await bad.room.list_rooms(api.ListRoomsRequest())
    assert unknown_key.value.status == 401 and "invalid API key" in unknown_key.value.message
