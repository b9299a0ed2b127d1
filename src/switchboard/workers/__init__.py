"""The `/agent` WebSocket: livekit-agents workers register, receive jobs and report on them."""
