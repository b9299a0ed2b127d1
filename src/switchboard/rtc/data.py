"""Data packets between participants: who may send what, stamped how, delivered to whom.

LiveKit's rules: the server stamps the sender's identity and sid, honours destination identities,
keeps each sender's order, forwards transcriptions only from agents, never forwards metrics, and drops
repeated user packets. End-to-end-encrypted packets are forwarded as they are, stamped and routed the
same. Text streams are forwarded without being read, except that only an agent may publish a
transcription (`lk.transcription`) of another participant's track.
"""

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from livekit.protocol import models

TRANSCRIPTION_TOPIC = "lk.transcription"
TRANSCRIBED_TRACK = "lk.transcribed_track_id"
_RECENT_NONCES = 256
_DROPPED_STREAMS = 256


@dataclass
class DataSender:
    """What the rules need to know about the sending participant, and its per-sender memory."""

    identity: str
    sid: str
    is_agent: bool
    can_publish_data: bool
    track_sids: Collection[str] = ()
    _nonces: deque[bytes] = field(default_factory=lambda: deque(maxlen=_RECENT_NONCES))
    _dropped_streams: deque[str] = field(default_factory=lambda: deque(maxlen=_DROPPED_STREAMS))


@dataclass(frozen=True)
class Delivery:
    payload: bytes
    reliable: bool
    destinations: frozenset[str]
    """Identities to deliver to; empty means everyone but the sender."""


def route(sender: DataSender, raw: bytes, reliable: bool) -> Delivery | str:
    """The packet to deliver, or the reason it is dropped."""
    if not sender.can_publish_data:
        return "sender may not publish data"
    packet = models.DataPacket()
    try:
        packet.ParseFromString(raw)
    except DecodeError:
        return "malformed DataPacket"
    value = packet.WhichOneof("value")
    if value is None or value == "metrics":
        return f"{value or 'empty'} packets are not forwarded"
    # `encrypted_packet` (the SDKs' end-to-end-encrypted user packets, streams and RPC) is opaque here: it
    # is stamped and routed by its DataPacket's destination identities, as LiveKit does.
    if value == "transcription":
        if not sender.is_agent:
            return "only agents may publish transcriptions"
        if not packet.transcription.track_id.startswith("TR_"):
            return "transcription for a track id that is not TR_…"  # receiving Rust clients would panic
    if value == "stream_header" and not _may_stream(sender, packet.stream_header):
        sender._dropped_streams.append(packet.stream_header.stream_id)
        return "only agents may publish transcriptions of another participant's track"
    if value in ("stream_chunk", "stream_trailer"):
        stream_id = getattr(packet, value).stream_id
        if stream_id in sender._dropped_streams:
            return "part of a dropped stream"

    packet.participant_sid = sender.sid
    if not (sender.is_agent and packet.participant_identity):
        packet.participant_identity = sender.identity  # agents may speak for others (transcriptions)
    packet.kind = models.DataPacket.RELIABLE if reliable else models.DataPacket.LOSSY
    destinations = set(packet.destination_identities)
    if value == "user":
        user = packet.user
        if user.nonce:
            if user.nonce in sender._nonces:
                return "repeated user packet"
            sender._nonces.append(user.nonce)
        user.participant_sid = sender.sid
        user.participant_identity = packet.participant_identity
        destinations |= set(user.destination_identities)
        del user.destination_identities[:]
        user.destination_identities.extend(sorted(destinations))
    return Delivery(packet.SerializeToString(), reliable, frozenset(destinations))


def _may_stream(sender: DataSender, header: models.DataStream.Header) -> bool:
    if header.topic != TRANSCRIPTION_TOPIC or sender.is_agent:
        return True
    transcribed = header.attributes.get(TRANSCRIBED_TRACK, "")
    return not transcribed or transcribed in sender.track_sids
