"""Closed rooms' dispatches, kept readable for a while after the room closed, so that a user can still
find out what happened to them and why (ListDispatch on the closed room).

Bounded twice: an entry expires `ttl` seconds after its room closed, and at most `max_rooms` entries are
kept (the oldest closure goes first). A room closing again under the same name replaces its entry.
"""

from collections import OrderedDict
from dataclasses import dataclass

from switchboard.core.rooms import Room


@dataclass(frozen=True)
class ClosedRoom:
    room: Room
    """As it was when it closed: no participants, its dispatches with their jobs ended."""
    closed_at: float
    reason: str


class RoomHistory:
    def __init__(self, ttl: float, max_rooms: int) -> None:
        self.ttl = ttl
        self.max_rooms = max_rooms
        self._rooms: OrderedDict[str, ClosedRoom] = OrderedDict()
        """By room name, oldest closure first."""

    def __len__(self) -> int:
        return len(self._rooms)

    def add(self, closed: ClosedRoom) -> None:
        self._rooms.pop(closed.room.name, None)
        if self.ttl <= 0 or self.max_rooms <= 0:
            return
        self._rooms[closed.room.name] = closed
        self.expire(closed.closed_at)
        while len(self._rooms) > self.max_rooms:
            self._rooms.popitem(last=False)

    def get(self, name: str, now: float) -> ClosedRoom | None:
        closed = self._rooms.get(name)
        return None if closed is None or now >= closed.closed_at + self.ttl else closed

    def expire(self, now: float) -> None:
        """Forget every room closed `ttl` or more seconds before `now`."""
        while self._rooms:
            oldest = next(iter(self._rooms.values()))
            if now < oldest.closed_at + self.ttl:
                break
            self._rooms.popitem(last=False)

    def next_expiry(self) -> float | None:
        oldest = next(iter(self._rooms.values()), None)
        return None if oldest is None else oldest.closed_at + self.ttl
