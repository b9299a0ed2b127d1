"""Data packet rules: stamping, destinations, who may send what, and what is never forwarded."""

import pytest
from livekit.protocol import models

from switchboard.rtc.data import DataSender, Delivery, route


def sender(is_agent: bool = False, can_publish_data: bool = True, tracks: tuple[str, ...] = ()) -> DataSender:
    return DataSender(
        "alice", "PA_alice", is_agent=is_agent, can_publish_data=can_publish_data, track_sids=tracks
    )


def delivered(result: Delivery | str) -> models.DataPacket:
    assert isinstance(result, Delivery), result
    return models.DataPacket.FromString(result.payload)


def test_user_packet_is_stamped_with_the_sender() -> None:
    packet = models.DataPacket(participant_identity="mallory", user=models.UserPacket(payload=b"x"))
    result = route(sender(), packet.SerializeToString(), reliable=False)
    out = delivered(result)
    assert (out.participant_identity, out.participant_sid) == ("alice", "PA_alice")
    assert (out.user.participant_identity, out.user.participant_sid) == ("alice", "PA_alice")
    assert out.kind == models.DataPacket.LOSSY and isinstance(result, Delivery) and not result.reliable


def test_destinations_from_packet_or_user_are_merged() -> None:
    packet = models.DataPacket(
        destination_identities=["bob"], user=models.UserPacket(payload=b"x", destination_identities=["carol"])
    )
    result = route(sender(), packet.SerializeToString(), reliable=True)
    assert isinstance(result, Delivery) and result.destinations == {"bob", "carol"}
    assert list(delivered(result).user.destination_identities) == ["bob", "carol"]


def test_repeated_nonce_is_dropped_and_sequence_is_kept() -> None:
    s = sender()
    packet = models.DataPacket(
        sequence=7, user=models.UserPacket(payload=b"x", nonce=b"n1")
    ).SerializeToString()
    assert delivered(route(s, packet, reliable=True)).sequence == 7
    assert route(s, packet, reliable=True) == "repeated user packet"


def test_encrypted_packets_are_stamped_and_routed_untouched() -> None:
    sealed = models.EncryptedPacket(encrypted_value=b"\x01\x02ciphertext", iv=b"iv" * 6, key_index=3)
    packet = models.DataPacket(
        participant_identity="mallory", destination_identities=["bob"], encrypted_packet=sealed, sequence=4
    )
    result = route(sender(), packet.SerializeToString(), reliable=True)
    out = delivered(result)
    assert isinstance(result, Delivery) and result.destinations == {"bob"} and result.reliable
    assert (out.participant_identity, out.participant_sid, out.sequence) == ("alice", "PA_alice", 4)
    assert out.encrypted_packet == sealed


def metrics_packet() -> models.DataPacket:
    packet = models.DataPacket()
    packet.metrics.SetInParent()
    return packet


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (metrics_packet(), "metrics packets are not forwarded"),
        (models.DataPacket(), "empty packets are not forwarded"),
        (models.DataPacket(transcription=models.Transcription(track_id="TR_x")), "only agents"),
    ],
)
def test_packets_that_are_never_forwarded(packet: models.DataPacket, reason: str) -> None:
    result = route(sender(), packet.SerializeToString(), reliable=True)
    assert isinstance(result, str) and reason in result


def test_malformed_and_unauthorised_packets_are_dropped() -> None:
    assert route(sender(), b"\xff\xff\xff", reliable=True) == "malformed DataPacket"
    user = models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString()
    assert route(sender(can_publish_data=False), user, reliable=True) == "sender may not publish data"


def test_agents_may_speak_for_others_and_send_transcriptions() -> None:
    agent = sender(is_agent=True)
    legacy = models.DataPacket(
        participant_identity="bob", transcription=models.Transcription(track_id="TR_bob", segments=[])
    )
    assert delivered(route(agent, legacy.SerializeToString(), reliable=True)).participant_identity == "bob"
    bad_track = models.DataPacket(transcription=models.Transcription(track_id="bob-mic"))
    assert "TR_" in str(route(agent, bad_track.SerializeToString(), reliable=True))


def stream(topic: str, transcribed: str, stream_id: str = "S1") -> bytes:
    header = models.DataStream.Header(
        stream_id=stream_id,
        topic=topic,
        attributes={"lk.transcribed_track_id": transcribed} if transcribed else {},
    )
    return models.DataPacket(stream_header=header).SerializeToString()


def test_only_agents_transcribe_other_participants_tracks() -> None:
    user = sender(tracks=("TR_own",))
    assert isinstance(route(user, stream("lk.transcription", "TR_own"), reliable=True), Delivery)
    assert isinstance(route(user, stream("lk.chat", "TR_other"), reliable=True), Delivery)
    refused = route(user, stream("lk.transcription", "TR_other", "S2"), reliable=True)
    assert isinstance(refused, str) and "only agents" in refused
    chunk = models.DataPacket(stream_chunk=models.DataStream.Chunk(stream_id="S2", content=b"x"))
    assert route(user, chunk.SerializeToString(), reliable=True) == "part of a dropped stream"
    assert isinstance(
        route(sender(is_agent=True), stream("lk.transcription", "TR_other"), reliable=True), Delivery
    )
