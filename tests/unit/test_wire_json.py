"""Twirp JSON is read tolerantly, except for enum values: an unknown one is refused by name as by number."""

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import agent_dispatch, room

from switchboard.core.errors import InvalidArgument
from switchboard.wire import check_enums, from_json


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
