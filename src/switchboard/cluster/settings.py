"""The `redis:` section (LiveKit's keys) and the `cluster:` section (Switchboard's own), importable alone."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisSettings:
    address: str = ""
    """host:port of a single Redis server; empty (and no sentinel or cluster addresses) = no Redis."""
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_addresses: tuple[str, ...] = ()
    cluster_addresses: tuple[str, ...] = ()
    timeout: float = 1.0
    """Connect and command timeout: while Redis is unreachable, calls that need it fail this fast."""
    wait_replicas: int = 0
    """CreateDispatch answers only once its dispatch is on this many of the master's replicas too (Redis
    WAIT, up to half of `timeout`), so that a failover to one of them loses no acknowledged dispatch;
    0 = once it is on the master (replication is asynchronous). Not with `cluster_addresses`."""

    @property
    def configured(self) -> bool:
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)


@dataclass(frozen=True)
class ClusterSettings:
    lease: float = 5.0
    """A node that has not renewed its lease for this long is dead to the others; one that could not renew
    it for this long (Redis unreachable) stops serving its rooms, so two nodes never own one room."""
    node_address: str = ""
    """The URL other nodes use to reach this one (signalling and API calls are relayed there); empty = the
    first bind address (or rtc.node_ip) and the port."""
    sort_by: str = "rooms"
    """Where a new room goes, like LiveKit's node_selector.sort_by: `rooms` (fewest rooms, counted
    atomically so a burst spreads evenly), `participants`, `cpuload`, or `random`."""
    room_slack: float = 0.1
    """With sort_by `rooms`: a new room stays on the node that was called while that node has at most this
    share more rooms than the node with the fewest (0.1: 10 %, rounded up), so that its calls and joins
    need no hop to another node; 0 = the fewest always (the called node among equals)."""
    adopt_interval: float = 60.0
    """How often a node looks in the store for rooms of lost nodes that nobody came back to, and brings
    back those placed on it (also when it starts, and when it finds a node lost: cluster/adoption.py)."""
    cpu_load_limit: float = 0.0
    """Like LiveKit's node_selector cpu limit: nodes whose CPU load (0 to 1) is above it take no new room
    while another node is below it; 0 = no limit."""


SORT_BY = ("rooms", "participants", "cpuload", "random")
SORT_BY_ALIASES = {"clients": "participants", "sysload": "cpuload"}
"""LiveKit's names for what Switchboard sorts by under another (its `sysload`, the machine's load average
per CPU, and `cpuload` are both this node's CPU share here); its `tracks` and `bytespersec` are refused."""
