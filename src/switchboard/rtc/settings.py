"""Settings of `/rtc`, apart from the service so that loading the config does not import aiortc."""

from dataclasses import dataclass, field

from switchboard.rtc.speakers import AudioSettings

TURN_PROTOCOLS = ("udp", "tcp", "tls")


@dataclass(frozen=True)
class TurnServer:
    """A TURN server the clients may relay through (livekit.yaml's `rtc.turn_servers` entries)."""

    host: str
    port: int
    protocol: str = "udp"
    """How clients reach it: udp, tcp or tls (TURN over TLS, `turns:`)."""
    username: str = ""
    credential: str = ""


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
    port_range_start: int = 0
    port_range_end: int = 0
    """The UDP ports ICE host candidates are bound to (inclusive); 0 and 0 = any ephemeral port."""
    node_ip: str = ""
    """The address offered in host candidates instead of the bound one (a server behind 1:1 NAT)."""
    turn_servers: tuple[TurnServer, ...] = ()
    stun_servers: tuple[str, ...] = ()
    """`host:port` STUN servers, handed to clients in the JoinResponse."""
    audio: AudioSettings = field(default_factory=AudioSettings)
    """Active speaker detection (livekit.yaml's `audio` section)."""
