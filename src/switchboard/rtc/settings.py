"""Settings of `/rtc`, apart from the service so that loading the config does not import aiortc."""

from dataclasses import dataclass, field

from switchboard.rtc.speakers import AudioSettings


@dataclass(frozen=True)
class RtcSettings:
    ping_interval: int = 5
    """Seconds between the clients' pings (sent to them in the JoinResponse; must be > 0)."""
    ping_timeout: int = 15
    """Seconds of silence after which a participant is considered gone (both sides)."""
    max_message_size: int = 1024 * 1024
    max_bad_frames: int = 20
    """Malformed signal frames in a row after which a participant is disconnected."""
    ice_addresses: tuple[str, ...] = ()
    """Local addresses offered as ICE host candidates; empty = every interface's (aioice's default)."""
    audio: AudioSettings = field(default_factory=AudioSettings)
    """Active speaker detection (livekit.yaml's `audio` section)."""
