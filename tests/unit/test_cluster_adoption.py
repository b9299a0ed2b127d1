"""Which rooms of the store a node brings back (cluster/adoption.py), case by case, and why a closed room's
key waits for its record's deletion."""

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from unittest.mock import AsyncMock

import pytest

from switchboard.cluster.adoption import adoptable
from switchboard.cluster.ownership import RoomOwnership
from switchboard.core.errors import Unavailable
from switchboard.core.events import RoomClosed
from tests.polling import eventually

HERE, OTHER, DEAD = "ND_here", "ND_other", "ND_dead"
ALIVE = {HERE, OTHER}


@pytest.mark.parametrize(
    ("writer", "owner", "expected", "why"),
    [
        (DEAD, None, True, "its node died and released nothing: nobody holds it"),
        (DEAD, DEAD, True, "its key still names the dead node"),
        (DEAD, HERE, True, "another node's look placed it here"),
        (DEAD, OTHER, False, "placed on another live node, which brings it back itself"),
        (HERE, None, True, "handed over by this node (its lease lapsed, then came back), and nobody took it"),
        (HERE, HERE, True, "claimed here, not held: this node's own restore waits for its own writes first"),
        (HERE, OTHER, False, "another live node took it over"),
        (OTHER, None, False, "another live node wrote it: it holds it, or its closing is being written"),
        (OTHER, OTHER, False, "another live node holds it"),
        (OTHER, HERE, True, "placed here by its writer's look (it handed the room over, then lived again)"),
    ],
)
def test_a_node_adopts_only_rooms_no_live_node_answers_for(
    writer: str, owner: str | None, expected: bool, why: str
) -> None:
    assert adoptable(writer, owner, ALIVE, HERE) is expected, why


class Registry:
    def __init__(self) -> None:
        self.regained: list[Callable[[], None]] = []

    def on_lease_lost(self, listener: object) -> None: ...

    def on_lease_regained(self, listener: Callable[[], None]) -> None:
        self.regained.append(listener)


def ownership_with(written: Callable[[str], Awaitable[None]], steps: list[str]) -> RoomOwnership:
    """A RoomOwnership whose placement records its releases in `steps`."""

    async def release(room: str) -> None:
        steps.append(f"{room} released")

    placement = SimpleNamespace(release=release)
    settings = SimpleNamespace(lease=1.0)
    cluster = SimpleNamespace(node_id=HERE, registry=Registry(), placement=placement, settings=settings)
    runtime = SimpleNamespace(engine=SimpleNamespace(rooms={}))
    ownership = RoomOwnership(cluster, runtime, send_elsewhere=AsyncMock())  # type: ignore[arg-type]
    ownership.record_written = written
    return ownership


async def test_a_closed_rooms_key_goes_only_once_its_records_deletion_is_written() -> None:
    """Else, in between, another node's look would find the record of a room no live node owns, and bring
    back a room just closed."""
    steps: list[str] = []
    record_written = asyncio.Event()

    async def written(room: str) -> None:
        await record_written.wait()
        steps.append(f"{room} written")

    ownership = ownership_with(written, steps)
    ownership.room_closed(RoomClosed("closed", "RM_x", "departure timeout"))
    for _ in range(5):  # turns of the loop: the release waits
        await asyncio.sleep(0)
    assert steps == []
    record_written.set()
    await eventually(lambda: steps, "the key released", accept=lambda done: len(done) == 2)
    assert steps == ["closed written", "closed released"]


async def test_a_closed_rooms_key_waits_for_the_lease_while_its_record_cannot_be_written() -> None:
    steps: list[str] = []
    reachable = False

    async def written(room: str) -> None:
        if not reachable:
            raise Unavailable("redis is unreachable")
        steps.append(f"{room} written")

    ownership = ownership_with(written, steps)
    ownership.room_closed(RoomClosed("closed", "RM_x", "handed over", handed_over=True))
    for _ in range(5):
        await asyncio.sleep(0)
    assert steps == []  # kept, not released before its record
    reachable = True
    [regained] = ownership.cluster.registry.regained  # type: ignore[attr-defined]
    regained()
    await eventually(lambda: steps, "the key released", accept=lambda done: len(done) == 2)
    assert steps == ["closed written", "closed released"]
