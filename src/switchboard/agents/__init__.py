"""Agents described by `agent-AGENT_NAME.yaml` files (OpenVidu's convention), run on livekit-agents."""
