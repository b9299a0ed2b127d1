"""`livekit.AgentDispatchService`: CreateDispatch, DeleteDispatch, ListDispatch."""

from livekit.protocol import agent_dispatch as pb

from switchboard.api.twirp import Method
from switchboard.auth.grants import Claims, require_room_admin
from switchboard.runtime import Runtime
from switchboard.wire import dispatch_spec, dispatch_to_proto, room_to_proto


def methods(runtime: Runtime) -> dict[str, Method]:
    engine = runtime.engine  # for reading; changes go through runtime.call

    def create(claims: Claims, request: pb.CreateAgentDispatchRequest) -> pb.AgentDispatch:
        require_room_admin(claims, request.room)
        spec = dispatch_spec(request)
        dispatch = runtime.call(lambda engine: engine.create_dispatch(request.room, spec, runtime.now()))
        return dispatch_to_proto(dispatch, room_to_proto(engine.room(request.room)))

    def delete(claims: Claims, request: pb.DeleteAgentDispatchRequest) -> pb.AgentDispatch:
        require_room_admin(claims, request.room)
        dispatch = runtime.call(
            lambda engine: engine.delete_dispatch(request.room, request.dispatch_id, runtime.now())
        )
        return dispatch_to_proto(dispatch)

    def list_(claims: Claims, request: pb.ListAgentDispatchRequest) -> pb.ListAgentDispatchResponse:
        require_room_admin(claims, request.room)
        # A closed room's dispatches stay listed for a while (room.history_ttl), as they ended.
        now = runtime.now()
        dispatches = engine.list_dispatches(request.room, request.dispatch_id, now)
        found = engine.find_room(request.room, now) if dispatches else None
        room = room_to_proto(found) if found else None
        return pb.ListAgentDispatchResponse(agent_dispatches=[dispatch_to_proto(d, room) for d in dispatches])

    return {
        "CreateDispatch": Method(pb.CreateAgentDispatchRequest, create),
        "DeleteDispatch": Method(pb.DeleteAgentDispatchRequest, delete),
        "ListDispatch": Method(pb.ListAgentDispatchRequest, list_),
    }
