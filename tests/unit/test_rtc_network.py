"""The `rtc` network keys: how they are read and checked, the ICE servers handed to clients, the UDP
port range and the advertised address."""

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aioice.candidate import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection

from switchboard.config import ConfigError, load_config
from switchboard.rtc.network import (
    NoIceCandidates,
    UdpPortRange,
    _advertise,
    configure_ice,
    ice_servers,
    require_candidates,
)
from switchboard.rtc.settings import RtcSettings, TurnServer

KEYS = f"keys: {{k: {'s' * 40}}}\n"


def rtc_config(tmp_path: Path, text: str) -> tuple[RtcSettings, tuple[str, ...]]:
    path = tmp_path / "switchboard.yaml"
    path.write_text(KEYS + "rtc:\n" + text)
    config = load_config(str(path), env={})
    return config.rtc, config.warnings


def test_network_keys_as_livekit_yaml_writes_them(tmp_path: Path) -> None:
    settings, warnings = rtc_config(
        tmp_path,
        """
  port_range_start: 50000
  port_range_end: 60000
  node_ip: 203.0.113.7
  use_external_ip: false
  stun_servers: ['stun.example.org:3478']
  turn_servers:
    - {host: turn.example.org, port: 3478, protocol: udp, username: u, credential: p}
    - {host: turn.example.org, port: 443, protocol: tls}
""",
    )
    assert (settings.port_range_start, settings.port_range_end) == (50000, 60000)
    assert settings.node_ip == "203.0.113.7"
    assert settings.stun_servers == ("stun.example.org:3478",)
    assert settings.turn_servers == (
        TurnServer("turn.example.org", 3478, "udp", "u", "p"),
        TurnServer("turn.example.org", 443, "tls"),
    )
    assert warnings == ()


def test_tcp_port_and_udp_port_are_ignored_with_a_warning(tmp_path: Path) -> None:
    _, warnings = rtc_config(tmp_path, "  tcp_port: 7881\n  udp_port: 7882\n")
    assert len(warnings) == 2, warnings
    assert "rtc.tcp_port ignored: ICE over TCP is not supported" in warnings[0]
    assert "rtc.udp_port ignored: a single-port UDP mux is not supported" in warnings[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("  port_range_start: 50000\n", "rtc.port_range_start: set both"),
        ("  port_range_start: 6\n  port_range_end: 5\n", "rtc.port_range_end: must not be below"),
        ("  port_range_start: 1\n  port_range_end: 70000\n", "rtc.port_range_end: must be at most 65535"),
        ("  node_ip: my.host\n", "rtc.node_ip: expected an IP address"),
        ("  node_ip: 12345\n", "rtc.node_ip: expected an IP address"),
        ("  use_external_ip: true\n", "rtc.use_external_ip: not supported"),
        ("  stun_servers: stun.example.org\n", "rtc.stun_servers: expected a list of 'host:port'"),
        ("  stun_servers: ['stun.example.org']\n", "rtc.stun_servers: expected a list of 'host:port'"),
        ("  turn_servers: {host: h}\n", "rtc.turn_servers: expected a list"),
        ("  turn_servers: [h]\n", r"rtc.turn_servers\[0\]: expected a mapping"),
        ("  turn_servers: [{port: 1, protocol: udp}]\n", r"rtc.turn_servers\[0\].host"),
        ("  turn_servers: [{host: h, port: 0, protocol: udp}]\n", r"rtc.turn_servers\[0\].port"),
        ("  turn_servers: [{host: h, port: 1, protocol: quic}]\n", r"\[0\].protocol: expected one of"),
        ("  turn_servers: [{host: h, port: 1, protocol: udp, credential: 5}]\n", r"\[0\].credential"),
        ("  turn_servers: [{host: h, port: 1, protocol: udp, secret: s}]\n", r"\[0\].secret: not supported"),
    ],
)
def test_bad_network_keys_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rtc_config(tmp_path, text)


def test_ice_servers_are_written_as_livekit_writes_them() -> None:
    settings = RtcSettings(
        turn_servers=(
            TurnServer("turn.example.org", 3478, "udp", "u", "p"),
            TurnServer("turn.example.org", 3478, "tcp", "u", "p"),
            TurnServer("turn.example.org", 443, "tls", "u", "p"),
            TurnServer("2001:db8::1", 3478, "udp"),
        ),
        stun_servers=("stun1.example.org:3478", "stun2.example.org:19302"),
    )
    servers = [(list(s.urls), s.username, s.credential) for s in ice_servers(settings)]
    assert servers == [
        (["turn:turn.example.org:3478?transport=udp"], "u", "p"),
        (["turn:turn.example.org:3478?transport=tcp"], "u", "p"),
        (["turns:turn.example.org:443?transport=tcp"], "u", "p"),
        (["turn:[2001:db8::1]:3478?transport=udp"], "", ""),
        (["stun:stun1.example.org:3478", "stun:stun2.example.org:19302"], "", ""),
    ]
    assert ice_servers(RtcSettings()) == []


def test_a_taken_port_range_is_an_error_until_a_port_is_released() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        taken = probe.getsockname()[1]
        ports = UdpPortRange(taken, taken)
        with pytest.raises(OSError, match=f"no free UDP port in {taken}-{taken} on 127.0.0.1"):
            ports.bind("127.0.0.1")
    free = ports.bind("127.0.0.1")  # released: it can be taken again
    assert free.getsockname() == ("127.0.0.1", taken)
    free.close()


def test_the_advertised_address_replaces_host_candidates_of_its_version() -> None:
    def host(address: str, port: int) -> Candidate:
        return Candidate("1", 1, "udp", 2130706431, address, port, "host")

    candidates = [host("10.0.0.5", 40000), host("fd00::5", 40001)]
    _advertise(candidates, "203.0.113.7")
    assert [(c.host, c.port) for c in candidates] == [("203.0.113.7", 40000), ("fd00::5", 40001)]
    assert candidates[0].foundation != "1"  # a different address is a different foundation


@pytest.fixture
def aioice_as_configured() -> Iterator[Callable[..., UdpPortRange | None]]:
    """configure_ice for this test only: aioice is back as it comes afterwards."""
    yield lambda **settings: configure_ice(RtcSettings(ice_addresses=("127.0.0.1",), **settings))
    configure_ice(RtcSettings())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def offer() -> str:
    """An aiortc offer (a data channel's), as the server makes them: its SDP."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("probe")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    lines = [line.split() for line in sdp.splitlines() if "typ host" in line]
    return [(bits[4], int(bits[5])) for bits in lines]


async def test_aiortc_offers_candidates_in_the_port_range_with_the_advertised_address(
    aioice_as_configured: Callable[..., UdpPortRange | None],
) -> None:
    port = free_udp_port()
    ports = aioice_as_configured(port_range_start=port, port_range_end=port + 1, node_ip="192.0.2.10")
    sdp = await offer()
    require_candidates(sdp, ports)
    [(address, bound)] = host_candidates(sdp)
    assert address == "192.0.2.10" and port <= bound <= port + 1, sdp


async def test_an_offer_without_candidates_is_refused_when_the_port_range_is_taken(
    aioice_as_configured: Callable[..., UdpPortRange | None],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        ports = aioice_as_configured(port_range_start=taken, port_range_end=taken)
        assert ports is not None and not ports.available()
        sdp = await offer()
        assert host_candidates(sdp) == []
        with pytest.raises(NoIceCandidates, match=f"every UDP port of .* \\({taken}-{taken}\\) is taken"):
            require_candidates(sdp, ports)
    assert ports.available()
    assert [port for _, port in host_candidates(await offer())] == [taken]
