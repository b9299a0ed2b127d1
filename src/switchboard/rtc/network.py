"""Where the server's WebRTC transports meet the network: the local addresses and UDP ports of its ICE
candidates, the address it advertises in them, and the STUN/TURN servers the clients are told to use.

aioice (aiortc's ICE) has no options for any of this, so what it needs is hooked into it, once per
process (one server per process): its host address lookup, the socket binding of its host candidates,
and the end of its candidate gathering.
"""

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation
from livekit.protocol import rtc

from switchboard.rtc.settings import RtcSettings


class NoIceCandidates(Exception):
    """A peer connection has no candidate to offer: every port of `rtc.port_range_*` is taken (taken
    since the join was admitted, see `UdpPortRange.available`, or by the time it publishes)."""


def ice_servers(settings: RtcSettings) -> list[rtc.ICEServer]:
    """The JoinResponse's (and ReconnectResponse's) `ice_servers`, written as LiveKit writes them
    (`iceServersForRoom`): one entry per TURN server, then one for all STUN servers. Unlike LiveKit,
    no public STUN server is added when none is configured: Switchboard works offline by default."""
    servers = []
    for turn in settings.turn_servers:
        scheme, transport = ("turns", "tcp") if turn.protocol == "tls" else ("turn", turn.protocol)
        url = f"{scheme}:{_url_host(turn.host)}:{turn.port}?transport={transport}"
        servers.append(rtc.ICEServer(urls=[url], username=turn.username, credential=turn.credential))
    if settings.stun_servers:
        servers.append(rtc.ICEServer(urls=[f"stun:{server}" for server in settings.stun_servers]))
    return servers


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL


# aioice as it comes, so that configuring again (tests do, in one process) starts from it.
_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses
_AIOICE_GATHER = aioice.ice.Connection.gather_candidates


def configure_ice(settings: RtcSettings) -> "UdpPortRange | None":
    """Make aioice bind and advertise host candidates as the settings say (for the whole process:
    one server per process); the port range they are bound in, if any."""
    aioice.ice.get_host_addresses = _AIOICE_HOST_ADDRESSES
    if settings.ice_addresses:
        restrict_ice_addresses(settings.ice_addresses)
    ports = None
    if settings.port_range_start:
        ports = UdpPortRange(settings.port_range_start, settings.port_range_end)
    # aioice binds each host candidate with `asyncio.get_running_loop().create_datagram_endpoint(…,
    # local_addr=(address, 0))`, with no way to choose the port. The loop cannot be patched (uvloop's
    # is a C type), so the `asyncio` that aioice.ice sees hands out a loop that binds in the range.
    setattr(aioice.ice, "asyncio", _AsyncioBindingIn(ports) if ports else asyncio)  # noqa: B010
    aioice.ice.Connection.gather_candidates = _gathering(settings.node_ip)  # type: ignore[method-assign]
    return ports


def restrict_ice_addresses(addresses: tuple[str, ...]) -> None:
    """Offer only these host candidates. aioice has no option for it (and always leaves out 127.0.0.1),
    so its address lookup is replaced."""
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class UdpPortRange:
    """Binds UDP sockets to a free port of [start, end], going round the range so that a port just
    released (whose last packets may still be on the way) is the last one taken again."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self._next = start

    def __str__(self) -> str:
        return f"every UDP port of rtc.port_range_start-end ({self.start}-{self.end}) is taken"

    def available(self) -> bool:
        """Whether a port is free now on one of the host candidate addresses: checked before a join,
        because the Rust SDKs ignore a leave while they connect and wait for their ICE timeout."""
        for address in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True):
            with contextlib.suppress(OSError):
                self.bind(address).close()
                return True
        return False

    def bind(self, address: str) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        size = self.end - self.start + 1
        for i in range(size):
            port = self.start + (self._next - self.start + i) % size
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._next = port + 1 if port < self.end else self.start
            return sock
        # An OSError, as a failed bind: aioice skips the address and gathering goes on without it
        # (see require_candidates).
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.start}-{self.end} on {address}")


class _AsyncioBindingIn:
    """The `asyncio` module, except that its running loop binds datagram endpoints in a port range."""

    def __init__(self, ports: UdpPortRange) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> "_LoopBindingIn":
        return _LoopBindingIn(asyncio.get_running_loop(), self._ports)


class _LoopBindingIn:
    def __init__(self, loop: asyncio.AbstractEventLoop, ports: UdpPortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, factory: Callable[[], asyncio.DatagramProtocol], local_addr: tuple[str, int], **kwargs: Any
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        sock = self._ports.bind(local_addr[0])
        return await self._loop.create_datagram_endpoint(factory, sock=sock, **kwargs)


def _gathering(node_ip: str) -> Any:
    """aioice's `Connection.gather_candidates`, then host candidates carry `node_ip`."""

    async def gather_candidates(connection: aioice.ice.Connection) -> None:
        await _AIOICE_GATHER(connection)
        if node_ip:
            _advertise(connection._local_candidates, node_ip)

    return gather_candidates


def require_candidates(description: str, ports: UdpPortRange | None) -> None:
    """Fail a local description (SDP) that offers no candidate at all: the client would wait for its ICE
    timeout. A renegotiation is not failed when only its new media sections got none (their ports are
    taken): once answered, they are bundled on the first section's transport, which has its port."""
    if "a=candidate:" not in description:
        raise NoIceCandidates(f"no ICE candidate could be gathered{f' ({ports})' if ports else ''}")


def _advertise(candidates: list[Candidate], node_ip: str) -> None:
    """Offer `node_ip` instead of the bound address of the host candidates of its IP version, as
    LiveKit does (pion's 1:1 NAT mapping). Only the offered address changes: aioice checks and sends
    from the bound socket, and a client's checks to `node_ip` reach it through the NAT."""
    version = ipaddress.ip_address(node_ip).version
    for candidate in candidates:
        if candidate.type == "host" and ipaddress.ip_address(candidate.host).version == version:
            candidate.host = node_ip
            candidate.foundation = candidate_foundation("host", "udp", node_ip)
