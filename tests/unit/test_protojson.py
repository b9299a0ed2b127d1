"""JSON is read tolerantly, except for enum values: an unknown one is refused by name as by number, in Twirp
bodies, WebSocket text frames and token roomConfig alike."""

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import agent, agent_dispatch, room

from switchboard.core.errors import InvalidArgument
from switchboard.protojson import check_enums, from_dict, from_json


@pytest.mark.parametrize(
    "body",
    [
        b'{"restart_policy": "JRP_NEVER"}',
        b'{"restartPolicy": "JRP_NEVER"}',
        b'{"restart_policy": 1}',
        b'{"restart_policy": "1"}',
        b'{"restart_policy": "JRP_NEVER", "unknown_field": {"x": [1]}}',
    ],
)
def test_known_enum_values_are_read_whatever_their_spelling(body: bytes) -> None:
    request = agent_dispatch.CreateAgentDispatchRequest()
    from_json(body, request)
    assert request.restart_policy == agent_dispatch.JRP_NEVER


@pytest.mark.parametrize(
    ("message", "body", "where"),
    [
        (agent_dispatch.CreateAgentDispatchRequest, b'{"restart_policy": "BOGUS"}', "restart_policy 'BOGUS'"),
        (agent_dispatch.CreateAgentDispatchRequest, b'{"restartPolicy": 99}', "restart_policy 99"),
        (agent_dispatch.CreateAgentDispatchRequest, b'{"restart_policy": "99"}', "restart_policy 99"),
        (room.CreateRoomRequest, b'{"agents": [{"restart_policy": "NOPE"}]}', "agents.restart_policy 'NOPE'"),
        (
            room.UpdateParticipantRequest,
            b'{"permission": {"canPublishSources": ["MICROPHONE", "LASER"]}}',
            "permission.can_publish_sources 'LASER'",
        ),
        (room.SendDataRequest, b'{"kind": 7}', "kind 7"),
    ],
)
def test_unknown_enum_values_are_refused_by_name_and_by_number(
    message: type[Message], body: bytes, where: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"unknown {where}: expected one of"):
        from_json(body, message())


def test_protobuf_bodies_get_the_same_check() -> None:
    request = agent_dispatch.CreateAgentDispatchRequest(room="r")
    request.restart_policy = 99  # type: ignore[assignment]  # what a protobuf body can carry
    parsed = agent_dispatch.CreateAgentDispatchRequest.FromString(request.SerializeToString())
    with pytest.raises(InvalidArgument, match="unknown restart_policy 99"):
        check_enums(parsed)


def test_malformed_json_is_still_a_parse_error() -> None:
    for body in (b"{", b"\xff", b'{"room": 5}'):
        with pytest.raises(json_format.ParseError):
            from_json(body, agent_dispatch.CreateAgentDispatchRequest())


@pytest.mark.parametrize("body", [b"5", b"null", b'"register"', b"[]", b"[1]"])
def test_a_document_that_is_not_an_object_is_a_parse_error(body: bytes) -> None:
    # protobuf alone reads a string or a list as an empty message, and fails on a number with a TypeError
    # (a Twirp 500 before this check).
    with pytest.raises(json_format.ParseError, match="expected a JSON object for CreateAgentDispatchRequest"):
        from_json(body, agent_dispatch.CreateAgentDispatchRequest())


def test_nesting_too_deep_to_decode_is_a_parse_error() -> None:
    with pytest.raises(json_format.ParseError):
        from_json("[" * 100_000 + "]" * 100_000, agent_dispatch.CreateAgentDispatchRequest())


def test_text_frames_of_the_worker_protocol_get_the_same_rules() -> None:
    message = agent.WorkerMessage()
    from_json('{"register": {"type": "JT_PUBLISHER", "agentName": "a", "futureField": 1}}', message)
    assert message.register.type == agent.JT_PUBLISHER and message.register.agent_name == "a"
    for text, where in [
        ('{"register": {"type": "JT_BOGUS"}}', "register.type 'JT_BOGUS'"),
        ('{"updateJob": {"jobId": "AJ_1", "status": "JS_DONE"}}', "update_job.status 'JS_DONE'"),
        ('{"updateWorker": {"status": 9}}', "update_worker.status 9"),
    ]:
        with pytest.raises(InvalidArgument, match=f"unknown {where}: expected one of"):
            from_json(text, agent.WorkerMessage())


def test_a_token_room_config_gets_the_same_rules() -> None:
    config = room.RoomConfiguration()
    from_dict({"agents": [{"agentName": "a", "restartPolicy": "JRP_NEVER"}], "futureField": {}}, config)
    assert config.agents[0].restart_policy == agent_dispatch.JRP_NEVER
    for agents, where in [
        ([{"agentName": "a", "restartPolicy": "JRP_SOMETIMES"}], "agents.restart_policy 'JRP_SOMETIMES'"),
        ([{"agentName": "a", "restartPolicy": 99}], "agents.restart_policy 99"),
    ]:
        with pytest.raises(InvalidArgument, match=f"unknown {where}"):
            from_dict({"agents": agents}, room.RoomConfiguration())
