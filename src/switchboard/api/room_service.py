"""`livekit.RoomService`: rooms, and the participants that are in them."""

from typing import Protocol

from livekit.protocol import models, rtc
from livekit.protocol import room as pb

from switchboard.api.twirp import Method, TwirpError
from switchboard.auth.grants import (
    Claims,
    require_destination_room,
    require_room_admin,
    require_room_create,
    require_room_list,
)
from switchboard.core.errors import NotFound
from switchboard.rtc import rpc as rpc_errors
from switchboard.runtime import Runtime
from switchboard.wire import participant_to_proto, room_spec, room_to_proto, track_to_proto


class LiveParticipants(Protocol):
    """What RoomService asks of connected participants (the rtc service); NotFound when not connected."""

    def update_subscriptions(self, room: str, identity: str, update: rtc.UpdateSubscription) -> None: ...

    async def perform_rpc(
        self, room: str, identity: str, method: str, payload: str, timeout_ms: int
    ) -> str: ...

    def move_participant(self, room: str, identity: str, destination: str) -> None: ...

    def forward_participant(self, room: str, identity: str, destination: str) -> None: ...


# How LiveKit reports a failed RPC (its psrpc codes, as Twirp codes).
_RPC_ERROR_CODES = {
    rpc_errors.APPLICATION_ERROR: "internal",
    rpc_errors.CONNECTION_TIMEOUT: "canceled",
    rpc_errors.RESPONSE_TIMEOUT: "canceled",
    rpc_errors.RECIPIENT_DISCONNECTED: "unavailable",
    1504: "malformed",  # response payload too large
    1505: "internal",  # send failed
    1400: "invalid_argument",  # unsupported method
    1401: "not_found",  # recipient not found
    rpc_errors.REQUEST_PAYLOAD_TOO_LARGE: "malformed",
    1403: "unimplemented",  # unsupported server
    1404: "unimplemented",  # unsupported version
}


def methods(runtime: Runtime, live: LiveParticipants) -> dict[str, Method]:
    engine = runtime.engine  # for reading; changes go through runtime.call

    def create_room(claims: Claims, request: pb.CreateRoomRequest) -> models.Room:
        require_room_create(claims)
        spec = room_spec(request)
        return room_to_proto(runtime.call(lambda engine: engine.create_room(spec, runtime.now())))

    def list_rooms(claims: Claims, request: pb.ListRoomsRequest) -> pb.ListRoomsResponse:
        require_room_list(claims)
        return pb.ListRoomsResponse(rooms=[room_to_proto(r) for r in engine.list_rooms(request.names)])

    def delete_room(claims: Claims, request: pb.DeleteRoomRequest) -> pb.DeleteRoomResponse:
        require_room_create(claims)
        runtime.call(lambda engine: engine.delete_room(request.room, runtime.now()))
        return pb.DeleteRoomResponse()

    def update_room_metadata(claims: Claims, request: pb.UpdateRoomMetadataRequest) -> models.Room:
        require_room_admin(claims, request.room)
        room = runtime.call(lambda engine: engine.update_room_metadata(request.room, request.metadata))
        return room_to_proto(room)

    def list_participants(claims: Claims, request: pb.ListParticipantsRequest) -> pb.ListParticipantsResponse:
        require_room_admin(claims, request.room)
        try:
            participants = engine.room(request.room).participants.values()
        except NotFound:
            participants = {}.values()  # LiveKit answers an empty list for a room it does not know
        return pb.ListParticipantsResponse(participants=[participant_to_proto(p) for p in participants])

    def get_participant(claims: Claims, request: pb.RoomParticipantIdentity) -> models.ParticipantInfo:
        require_room_admin(claims, request.room)
        return participant_to_proto(engine.participant(request.room, request.identity))

    def remove_participant(
        claims: Claims, request: pb.RoomParticipantIdentity
    ) -> pb.RemoveParticipantResponse:
        require_room_admin(claims, request.room)
        runtime.call(lambda engine: engine.remove_participant(request.room, request.identity, runtime.now()))
        return pb.RemoveParticipantResponse()

    def mute_published_track(claims: Claims, request: pb.MuteRoomTrackRequest) -> pb.MuteRoomTrackResponse:
        require_room_admin(claims, request.room)
        track = runtime.call(
            lambda engine: engine.mute_track(
                request.room, request.identity, request.track_sid, request.muted, by_server=True
            )
        )
        return pb.MuteRoomTrackResponse(track=track_to_proto(track))

    def update_participant(claims: Claims, request: pb.UpdateParticipantRequest) -> models.ParticipantInfo:
        require_room_admin(claims, request.room)
        participant = runtime.call(
            lambda engine: engine.update_participant(
                request.room,
                request.identity,
                name=request.name or None,
                metadata=request.metadata or None,
                attributes=dict(request.attributes),
            )
        )
        return participant_to_proto(participant)

    def send_data(claims: Claims, request: pb.SendDataRequest) -> pb.SendDataResponse:
        require_room_admin(claims, request.room)
        reliable = request.kind == models.DataPacket.RELIABLE
        destinations = list(request.destination_identities)
        user = models.UserPacket(
            payload=request.data,
            topic=request.topic if request.HasField("topic") else None,
            destination_identities=destinations,
            nonce=request.nonce,
        )
        kind = models.DataPacket.RELIABLE if reliable else models.DataPacket.LOSSY
        packet = models.DataPacket(kind=kind, user=user, destination_identities=destinations)
        body = packet.SerializeToString()
        runtime.call(lambda engine: engine.send_data(request.room, body, reliable, destinations))
        return pb.SendDataResponse()

    def update_subscriptions(
        claims: Claims, request: pb.UpdateSubscriptionsRequest
    ) -> pb.UpdateSubscriptionsResponse:
        require_room_admin(claims, request.room)
        engine.participant(request.room, request.identity)
        update = rtc.UpdateSubscription(
            track_sids=request.track_sids,
            subscribe=request.subscribe,
            participant_tracks=request.participant_tracks,
        )
        live.update_subscriptions(request.room, request.identity, update)
        return pb.UpdateSubscriptionsResponse()

    async def perform_rpc(claims: Claims, request: pb.PerformRpcRequest) -> pb.PerformRpcResponse:
        require_room_admin(claims, request.room)
        if not request.destination_identity:
            raise TwirpError("invalid_argument", "destination identity is required")
        engine.participant(request.room, request.destination_identity)
        timeout_ms = request.response_timeout_ms or rpc_errors.DEFAULT_RESPONSE_TIMEOUT_MS
        try:
            payload = await live.perform_rpc(
                request.room, request.destination_identity, request.method, request.payload, timeout_ms
            )
        except rpc_errors.RpcError as exc:
            raise TwirpError(_RPC_ERROR_CODES.get(exc.code, "unknown"), str(exc)) from exc
        return pb.PerformRpcResponse(payload=payload)

    def move_participant(claims: Claims, request: pb.MoveParticipantRequest) -> pb.MoveParticipantResponse:
        require_destination_room(claims, request.room, request.destination_room)
        if request.room == request.destination_room:
            raise TwirpError("invalid_argument", "destination room cannot be the same as source room")
        if engine.participant(request.room, request.identity).job is not None:
            raise TwirpError(
                "failed_precondition", "an agent runs its job in its own room: it cannot be moved"
            )
        engine.room(request.destination_room)  # it must exist: moving creates no room
        live.move_participant(request.room, request.identity, request.destination_room)
        return pb.MoveParticipantResponse()

    def forward_participant(
        claims: Claims, request: pb.ForwardParticipantRequest
    ) -> pb.ForwardParticipantResponse:
        require_destination_room(claims, request.room, request.destination_room)
        if request.room == request.destination_room:
            raise TwirpError("invalid_argument", "destination room cannot be the same as source room")
        engine.participant(request.room, request.identity)
        destination = engine.room(request.destination_room)  # it must exist: forwarding creates no room
        if request.identity in destination.participants:
            raise TwirpError(
                "already_exists", f"participant '{request.identity}' is already in the destination room"
            )
        live.forward_participant(request.room, request.identity, request.destination_room)
        return pb.ForwardParticipantResponse()

    return {
        "CreateRoom": Method(pb.CreateRoomRequest, create_room),
        "ListRooms": Method(pb.ListRoomsRequest, list_rooms),
        "DeleteRoom": Method(pb.DeleteRoomRequest, delete_room),
        "UpdateRoomMetadata": Method(pb.UpdateRoomMetadataRequest, update_room_metadata),
        "ListParticipants": Method(pb.ListParticipantsRequest, list_participants),
        "GetParticipant": Method(pb.RoomParticipantIdentity, get_participant),
        "RemoveParticipant": Method(pb.RoomParticipantIdentity, remove_participant),
        "MutePublishedTrack": Method(pb.MuteRoomTrackRequest, mute_published_track),
        "UpdateParticipant": Method(pb.UpdateParticipantRequest, update_participant),
        "SendData": Method(pb.SendDataRequest, send_data),
        "UpdateSubscriptions": Method(pb.UpdateSubscriptionsRequest, update_subscriptions),
        "PerformRpc": Method(pb.PerformRpcRequest, perform_rpc),
        "MoveParticipant": Method(pb.MoveParticipantRequest, move_participant),
        "ForwardParticipant": Method(pb.ForwardParticipantRequest, forward_participant),
    }
