"""Switchboard: a LiveKit-compatible server that sends AI agents into real-time rooms."""

__version__ = "0.1.0"

# What clients and workers are told the server is (JoinResponse, ServerInfo). The SDKs enable features by
# LiveKit's version: the Rust-based ones refuse RPC below 1.8.0. Switchboard's own version travels in
# ServerInfo.debug_info, the `Server` header of `GET /` and `switchboard --version`.
LIVEKIT_COMPATIBLE_VERSION = "1.9.0"
LIVEKIT_PROTOCOL = 16
