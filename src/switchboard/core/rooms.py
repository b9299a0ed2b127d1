"""Rooms and participants, and the rule that decides when an unused room closes."""

from dataclasses import dataclass, field

from switchboard.core.dispatch import Dispatch

# Participant kinds, as the `kind` claim of a token spells them.
STANDARD = "standard"
AGENT = "agent"
EGRESS = "egress"


@dataclass
class Track:
    """A track a participant publishes. `kind` is "audio" or "video"; `source` LiveKit's lower-case name."""

    sid: str
    kind: str
    name: str = ""
    source: str = ""
    muted: bool = False
    mime_type: str = ""
    mid: str = ""
    encryption: int = 0
    """The publisher's end-to-end encryption (LiveKit's Encryption.Type: 0 none, 1 GCM, 2 custom)."""
    width: int = 0
    height: int = 0
    """A video track's size as its publisher announced it (0 for audio, or when not announced)."""


@dataclass
class Participant:
    identity: str
    sid: str
    joined_at: float
    name: str = ""
    kind: str = STANDARD
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    recorder: bool = False
    hidden: bool = False
    active: bool = False
    """Its media connection is up (ParticipantInfo state ACTIVE; JOINED before)."""
    has_published: bool = False
    job: tuple[str, int] | None = None
    """(job id, attempt) for an agent that joined with a job token Switchboard minted."""
    forwarded: bool = False
    """A copy of a participant of another room, shown here with its tracks (ForwardParticipant)."""
    tracks: dict[str, Track] = field(default_factory=dict)
    version: int = 0
    """Bumped on every change; clients ignore participant updates older than what they have."""

    def changed(self) -> None:
        self.version += 1

    @property
    def dependent(self) -> bool:
        """Agents, egress and recorders follow a room: they never keep it open or trigger participant jobs."""
        return self.kind in (AGENT, EGRESS) or self.recorder


@dataclass
class Room:
    name: str
    sid: str
    created_at: float
    empty_timeout: int
    departure_timeout: int
    max_participants: int = 0
    metadata: str = ""
    participants: dict[str, Participant] = field(default_factory=dict)
    dispatches: dict[str, Dispatch] = field(default_factory=dict)
    last_departure_at: float | None = None

    @property
    def num_participants(self) -> int:
        return sum(1 for p in self.participants.values() if not p.dependent)

    def close_deadline(self) -> tuple[float, str] | None:
        """When the room closes if nothing changes, and the timeout that closes it; None while a
        non-dependent participant is present.

        Like LiveKit: `empty_timeout` counts from creation until someone has left; after the last
        departure, `departure_timeout` counts from that departure.
        """
        if self.num_participants:
            return None
        if self.last_departure_at is not None:
            return self.last_departure_at + self.departure_timeout, "departure timeout"
        return self.created_at + self.empty_timeout, "empty timeout"
