"""Switchboard: a LiveKit-compatible server that sends AI agents into real-time rooms."""

__version__ = "0.1.0"
