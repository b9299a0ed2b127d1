"""Decisions that core hands to the I/O layer. Core never performs them; it only says what must happen."""

from dataclasses import dataclass

from switchboard.core.jobs import Job


@dataclass(frozen=True)
class RoomStarted:
    room: str
    sid: str


@dataclass(frozen=True)
class RoomClosed:
    room: str
    sid: str
    reason: str


@dataclass(frozen=True)
class JobEnded:
    job: Job


@dataclass(frozen=True)
class DisconnectParticipant:
    room: str
    identity: str
    reason: str


Decision = RoomStarted | RoomClosed | JobEnded | DisconnectParticipant
