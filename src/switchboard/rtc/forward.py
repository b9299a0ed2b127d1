"""A participant forwarded into another room (RoomService.ForwardParticipant).

As LiveKit describes it: a participant joins the destination room with the same information as the
source participant, except its kind (`FORWARDED` among its kind details); its tracks are the source's
own (the same relays, the same track sids), and every change to the source shows there too. The forward
ends when the source leaves, or when it is removed from the destination room.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from livekit.protocol import models

from switchboard.rtc.relay import TrackRelay

if TYPE_CHECKING:
    from switchboard.rtc.participant import ParticipantSession
    from switchboard.rtc.room import Room


class Forward:
    def __init__(self, source: "ParticipantSession", room: "Room", sid: str) -> None:
        self.source = source
        self.room = room
        self.sid = sid
        self.identity = source.identity
        self.ended = False

    @property
    def closed(self) -> bool:
        return self.ended or self.source.closed

    @property
    def hidden(self) -> bool:
        return self.source.hidden

    @property
    def relays(self) -> Mapping[str, TrackRelay]:
        return self.source.relays

    def info(self, state: str = "") -> models.ParticipantInfo:
        info = self.source.info(state)
        info.sid = self.sid
        info.kind_details.append(models.ParticipantInfo.FORWARDED)
        return info

    def farewell(self, reason: int) -> models.ParticipantInfo:
        info = self.source.farewell(reason)
        info.sid = self.sid
        info.kind_details.append(models.ParticipantInfo.FORWARDED)
        return info

    def allows(self, subscriber: Any, track_sid: str) -> bool:
        return self.source.allows(subscriber, track_sid)

    def track_subscribed(self, relay: TrackRelay) -> None:
        self.source.track_subscribed(relay)
