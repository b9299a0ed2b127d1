"""The node lease and room ownership, as a model: nodes whose clocks drift, renewals that are slow to reach
Redis or acknowledged out of order, rooms claimed from any node, time passing. Whatever the sequence, no
two nodes serve one room at the same moment (hold it while holding their lease), and a node never thinks
it holds its lease once Redis may have let its key expire."""

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from switchboard.cluster.lease import Lease
from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.ownership import handled_here

DURATION = 3.0
DRIFT = 0.05
"""How much faster or slower than Redis's clock a node's runs: within what the lease's margin covers."""
ROOMS = ("a", "b")


@dataclass
class Node:
    drift: float
    offset: float
    lease: Lease = field(default_factory=lambda: Lease(DURATION))
    rooms: set[str] = field(default_factory=set)
    """Rooms in this node's engine."""

    def clock(self, t: float) -> float:
        return self.offset + t * (1 + self.drift)

    def serves(self, room: str, t: float) -> bool:
        return room in self.rooms and self.lease.held(self.clock(t))


class Deployment(RuleBasedStateMachine):
    """Redis (node keys with an expiry, room keys naming a node) and the nodes, as NodeRegistry and
    RoomOwnership use them."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.nodes: list[Node] = []
        self.expiry: list[float] = []
        self.owner: dict[str, int] = {}

    @initialize(
        clocks=st.lists(st.tuples(st.floats(-DRIFT, DRIFT), st.floats(0, 1000)), min_size=2, max_size=3)
    )
    def start(self, clocks: list[tuple[float, float]]) -> None:
        for drift, offset in clocks:
            node = Node(drift, offset)
            node.lease.renewed(node.clock(self.t))
            self.nodes.append(node)
            self.expiry.append(self.t + DURATION)

    def alive(self, index: int) -> bool:
        return self.expiry[index] > self.t

    @rule(seconds=st.floats(0, DURATION))
    def time_passes(self, seconds: float) -> None:
        self.t += seconds

    @rule(data=st.data(), flight=st.floats(0, DURATION))
    def renewal(self, data: st.DataObject, flight: float) -> None:
        """A renewal sent `flight` seconds ago reaches Redis now (SET ... GET) and is acknowledged."""
        index = data.draw(st.integers(0, len(self.nodes) - 1))
        node = self.nodes[index]
        sent = max(self.t - flight, 0.0)
        lapsed = not self.alive(index) and node.lease.renewed_at is not None
        self.expiry[index] = self.t + DURATION
        node.lease.renewed(node.clock(sent))
        if lapsed:  # NodeRegistry.renew: the lease is lost (its rooms closed), then held again
            node.rooms.clear()

    @rule(data=st.data())
    def lease_check(self, data: st.DataObject) -> None:
        node = self.nodes[data.draw(st.integers(0, len(self.nodes) - 1))]
        if not node.lease.held(node.clock(self.t)):
            node.lease.lost()
            node.rooms.clear()

    @rule(data=st.data(), room=st.sampled_from(ROOMS))
    def claim(self, data: st.DataObject, room: str) -> None:
        """A join or CreateRoom reaches node `index`: the placement script, then RoomOwnership.claim."""
        index = data.draw(st.integers(0, len(self.nodes) - 1))
        node = self.nodes[index]
        owner = self.owner.get(room)
        if owner is None or not self.alive(owner):
            live = [i for i in range(len(self.nodes)) if self.alive(i)]
            if not live:
                return
            owner = self.owner[room] = index if index in live else live[0]
        if owner == index and node.lease.held(node.clock(self.t)):
            node.rooms.add(room)

    @rule(data=st.data(), room=st.sampled_from(ROOMS))
    def close(self, data: st.DataObject, room: str) -> None:
        index = data.draw(st.integers(0, len(self.nodes) - 1))
        if room in self.nodes[index].rooms:
            self.nodes[index].rooms.discard(room)
            if self.owner.get(room) == index:
                del self.owner[room]

    @precondition(lambda self: bool(self.nodes))
    @invariant()
    def one_node_serves_a_room(self) -> None:
        for room in ROOMS:
            serving = [i for i, node in enumerate(self.nodes) if node.serves(room, self.t)]
            assert len(serving) <= 1, (room, serving, self.t)

    @precondition(lambda self: bool(self.nodes))
    @invariant()
    def a_held_lease_has_a_live_key(self) -> None:
        for index, node in enumerate(self.nodes):
            if node.lease.held(node.clock(self.t)):
                assert self.alive(index), (index, self.t, self.expiry[index])


Deployment.TestCase.settings = settings(max_examples=2000, stateful_step_count=40, deadline=None)
TestDeployment = Deployment.TestCase


@given(
    sent=st.lists(st.floats(0, 100), min_size=1, max_size=10),
    later=st.floats(0, 100),
)
def test_acknowledgements_in_any_order_keep_the_latest_renewal(sent: list[float], later: float) -> None:
    lease = Lease(DURATION)
    for at in sent:
        lease.renewed(at)
    assert lease.renewed_at == max(sent)
    now = max(sent) + later
    assert lease.held(now) == (later < DURATION * 0.9)
    lease.lost()
    assert not lease.held(max(sent)), "lost until a new acknowledged renewal"


def test_a_room_without_a_live_owner_is_answered_here() -> None:
    other = NodeInfo(id="ND_other", url="http://other")
    assert handled_here("ND_me", None)
    assert handled_here("ND_me", NodeInfo(id="ND_me", url="http://me"))
    assert not handled_here("ND_me", other)
