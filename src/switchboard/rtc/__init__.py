"""Participants in rooms: `/rtc` signalling (protocol v0), WebRTC transports (aiortc), audio relay, data."""
