"""`switchboard.NodeService`: the nodes of the deployment (ListNodes), and draining one (DrainNode: it keeps
its rooms, new rooms go elsewhere; UndrainNode). A node without `redis:` lists itself alone.

Grants as for the workers (api/worker_service.py): listing needs `roomList`, or `roomAdmin` with no room
restriction; draining and undraining need `roomAdmin` with no room restriction. A call naming another
node is forwarded to it (cluster/forwarding.py).
"""

from typing import Any, Protocol

from switchboard.api import switchboard_proto as pb
from switchboard.api.twirp import Method, TwirpError
from switchboard.auth.grants import Claims, require_server_admin, require_server_view
from switchboard.cluster.node import ClusterNode
from switchboard.cluster.nodes import NodeDescription, NodeInfo
from switchboard.cluster.redis_client import UNREACHABLE
from switchboard.core.errors import NotFound, Unavailable
from switchboard.runtime import Runtime

ALONE = (
    "this node runs alone (its config has no `redis:` section): there is no other node for new rooms; "
    "stop it with SIGTERM to drain it"
)


class Nodes(Protocol):
    async def list(self) -> list[NodeInfo]: ...

    async def set_draining(self, draining: bool) -> NodeInfo: ...


class ClusterNodes:
    """The live nodes as the registry in Redis has them."""

    def __init__(self, cluster: ClusterNode, unreachable: str) -> None:
        self.registry = cluster.registry
        self._unreachable = unreachable

    async def list(self) -> list[NodeInfo]:
        try:
            return await self.registry.nodes()
        except UNREACHABLE:
            raise Unavailable(self._unreachable) from None

    async def set_draining(self, draining: bool) -> NodeInfo:
        try:
            await self.registry.set_draining(draining)
        except UNREACHABLE:  # the state is published with the next renewal that reaches Redis
            raise Unavailable(self._unreachable) from None
        return self.registry.info()


class SingleNode:
    """This node alone; draining it (SIGTERM) shows as its state."""

    def __init__(self, description: NodeDescription, runtime: Runtime) -> None:
        self.description = description
        self.runtime = runtime

    async def list(self) -> list[NodeInfo]:
        self.description.draining = self.runtime.engine.draining
        return [self.description.info()]

    async def set_draining(self, draining: bool) -> NodeInfo:
        raise TwirpError("failed_precondition", ALONE)


def node_to_proto(node: NodeInfo) -> Any:
    return pb.Node(
        id=node.id,
        address=node.url,
        state=node.state,
        rooms=node.rooms,
        participants=node.participants,
        workers=node.workers,
        cpu_load=node.cpu_load,
        version=node.version,
        started_at=int(node.started_at * 1e9),
        updated_at=int(node.updated_at * 1e9),
    )


def methods(nodes: Nodes, node_id: str) -> dict[str, Method]:
    async def list_(claims: Claims, _: Any) -> Any:
        require_server_view(claims)
        return pb.ListNodesResponse(nodes=[node_to_proto(n) for n in await nodes.list()])

    def steer(draining: bool) -> Method:
        async def handler(claims: Claims, request: Any) -> Any:
            require_server_admin(claims)
            if request.node_id not in ("", node_id):  # a live one was forwarded its call
                raise NotFound(f"no live node has the id {request.node_id!r} (`switchboard node list`)")
            return node_to_proto(await nodes.set_draining(draining))

        return Method(pb.DrainNodeRequest if draining else pb.UndrainNodeRequest, handler)

    return {
        "ListNodes": Method(pb.ListNodesRequest, list_),
        "DrainNode": steer(True),
        "UndrainNode": steer(False),
    }
