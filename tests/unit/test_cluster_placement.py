"""Which live nodes may take a new room, in the order `node_selector` says (the Lua claim script then
takes the first, or the fewest rooms with `sort_by: rooms`; that part runs on a real Redis in
tests/integration/test_cluster_rooms.py and test_cluster_scenarios.py)."""

from types import SimpleNamespace

import pytest

from switchboard.cluster.nodes import NodeInfo
from switchboard.cluster.placement import RoomPlacement

HERE = "ND_here"


def placement(sort_by: str, cpu_load_limit: float = 0.0) -> RoomPlacement:
    redis = SimpleNamespace(register_script=lambda script: None)
    registry = SimpleNamespace(node_id=HERE, redis=redis)
    return RoomPlacement(registry, sort_by=sort_by, cpu_load_limit=cpu_load_limit)  # type: ignore[arg-type]


NODES = [
    NodeInfo("ND_a", "http://a", rooms=1, participants=9, cpu_load=0.2),
    NodeInfo("ND_b", "http://b", rooms=5, participants=2, cpu_load=0.9),
    NodeInfo(HERE, "http://here", rooms=5, participants=4, cpu_load=0.5),
    NodeInfo("ND_drained", "http://d", state="draining", participants=0, cpu_load=0.0),
]


@pytest.mark.parametrize(
    ("sort_by", "order"),
    [
        # This node first among equals: the Lua script keeps the first of the fewest rooms.
        ("rooms", [HERE, "ND_a", "ND_b"]),
        ("participants", ["ND_b", HERE, "ND_a"]),
        ("cpuload", ["ND_a", HERE, "ND_b"]),
    ],
)
def test_draining_nodes_take_no_room_and_the_rest_are_sorted(sort_by: str, order: list[str]) -> None:
    assert [n.id for n in placement(sort_by)._candidates(NODES)] == order


def test_random_takes_every_serving_node_in_some_order() -> None:
    orders = {tuple(n.id for n in placement("random")._candidates(NODES)) for _ in range(200)}
    assert all(sorted(order) == sorted([HERE, "ND_a", "ND_b"]) for order in orders)
    assert len(orders) > 1, "not always the same order"


def test_nodes_over_the_cpu_limit_take_no_room_while_another_is_under_it() -> None:
    assert [n.id for n in placement("rooms", cpu_load_limit=0.6)._candidates(NODES)] == [HERE, "ND_a"]
    # All over it: the limit cannot place the room anywhere, so it is not applied.
    assert [n.id for n in placement("rooms", cpu_load_limit=0.1)._candidates(NODES)] == [HERE, "ND_a", "ND_b"]
