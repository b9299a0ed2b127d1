"""Which node a room lives on: `{sb}:room:<name>` names its owner, claimed atomically by a Lua script.

A room is owned by the node its key names while that node's lease lives. Claiming a room that has no
live owner picks the node for it (fewest rooms by default, from `{sb}:node_rooms`, counted in the same
script so a burst of new rooms spreads evenly; the node that was asked while it has at most
`node_selector.room_slack` more, which spares the room's later calls a hop) and writes it;
every node that asks meanwhile gets the same answer. A room's key goes when its owner closes it; a dead
owner's keys are taken over on the next claim."""

import random
from typing import Any

from switchboard.cluster.nodes import ROOM_COUNTS, NodeInfo, NodeRegistry, node_key
from switchboard.cluster.redis_client import PREFIX
from switchboard.cluster.settings import ClusterSettings

# KEYS: the room's key, the room-count hash. ARGV: the node key prefix, the sort ("rooms" picks the
# candidate with the fewest rooms, or the calling node while it has at most the slack's share more than
# that; anything else takes the first), the slack, the calling node, then the candidates in order.
# Returns the owner, and 1 when this call made the claim.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then return {owner, 0} end
local best, fewest, mine = nil, nil, nil
for i = 5, #ARGV do
  local n = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if ARGV[i] == ARGV[4] then mine = n end
  if best == nil or (ARGV[2] == 'rooms' and n < fewest) then best, fewest = ARGV[i], n end
end
if best == nil then return {false, 0} end
if ARGV[2] == 'rooms' and mine ~= nil and mine <= fewest + math.ceil(fewest * tonumber(ARGV[3])) then
  best = ARGV[4]
end
redis.call('SET', KEYS[1], best)
redis.call('HINCRBY', KEYS[2], best, 1)
return {best, 1}
"""

# KEYS: the room's key, the room-count hash. ARGV: the node that releases it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
  return 1
end
return 0
"""


def room_key(room: str) -> str:
    return f"{PREFIX}room:{room}"


class NoNodeAvailable(Exception):
    """Every live node is draining (or over its CPU limit), so a new room has nowhere to go."""


class RoomPlacement:
    def __init__(
        self,
        registry: NodeRegistry,
        sort_by: str = ClusterSettings.sort_by,
        cpu_load_limit: float = ClusterSettings.cpu_load_limit,
        room_slack: float = ClusterSettings.room_slack,
    ) -> None:
        self.registry = registry
        self.sort_by = sort_by
        self.cpu_load_limit = cpu_load_limit
        self.room_slack = room_slack
        redis: Any = registry.redis
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def owner(self, room: str) -> NodeInfo | None:
        """The live node that holds `room`, or None (no such room anywhere, or its node died)."""
        node_id = await self.registry.redis.get(room_key(room))
        return None if node_id is None else await self.registry.node(node_id)

    async def claim(self, room: str) -> NodeInfo:
        """The node that holds `room`, placing it first if no live node does."""
        candidates = self._candidates(await self.registry.nodes())
        args = [
            node_key(""),
            self.sort_by,
            self.room_slack,
            self.registry.node_id,
            *[n.id for n in candidates],
        ]
        node_id, _ = await self._claim(keys=[room_key(room), ROOM_COUNTS], args=args)
        if not node_id:
            raise NoNodeAvailable(f"no node can take room {room!r}: every live node is draining or full")
        chosen = next((n for n in candidates if n.id == node_id), None)
        return chosen or await self._live(node_id)

    async def release(self, room: str) -> None:
        """This node closed `room`: the next claim places it anew."""
        await self._release(keys=[room_key(room), ROOM_COUNTS], args=[self.registry.node_id])

    async def _live(self, node_id: str) -> NodeInfo:
        node = await self.registry.node(node_id)
        if node is None:  # it died between the claim and this read: the next claim moves the room
            raise NoNodeAvailable(f"the node holding this room ({node_id}) has just stopped")
        return node

    def _candidates(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        # This node first: a tie (the script keeps the first of equals, and the sorts below are stable)
        # places the room where the call already is, which saves every later call on it a hop.
        nodes = sorted(nodes, key=lambda n: n.id != self.registry.node_id)
        serving = [n for n in nodes if n.state == "serving"]
        if self.cpu_load_limit:
            cool = [n for n in serving if n.cpu_load <= self.cpu_load_limit]
            serving = cool or serving
        match self.sort_by:
            case "participants":
                return sorted(serving, key=lambda n: (n.participants, n.rooms))
            case "cpuload":
                return sorted(serving, key=lambda n: n.cpu_load)
            case "random":
                return random.sample(serving, len(serving))
        return serving
