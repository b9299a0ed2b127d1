"""Rooms across networks, with the official clients: the UDP port range of the server's ICE candidates,
the address it advertises in them (`rtc.node_ip`), and TURN (a real coturn started here) for clients
forced to relay, over UDP and over TCP; and, with Linux network namespaces and nftables, a client behind a
NAT that reaches nothing of this machine but the TURN server, and one that reaches a server behind 1:1
NAT only at its advertised address.
"""

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc._proto import room_pb2

from tests.browser import JOIN_TIMEOUT, PROXY_VARIABLES, BrowserScenario, served_page, toolchain_or_fail
from tests.conftest import Server, free_port, start_server, stop_server
from tests.integration.test_browser import MIN_FRAMES
from tests.integration.test_rtc_python import Client
from tests.isolated_participant import selected_local_candidates
from tests.polling import eventually

TURN_USER, TURN_PASSWORD, TURN_REALM = "switchboard", "relay-password", "switchboard.test"
TURN_STARTUP = 10.0
REPOSITORY = Path(__file__).resolve().parents[2]

# A refused join must be told, not left to the client's ICE timeout (15 s in the SDKs).
REFUSAL_BOUND = 5.0


def free_udp_range(size: int) -> int:
    """The first of `size` consecutive UDP ports free on 127.0.0.1, below Linux's ephemeral range
    (32768+) so that no other socket is given one of them by chance."""
    for _ in range(200):
        start = random.randrange(20000, 32000 - size)
        socks = []
        try:
            for port in range(start, start + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} consecutive free UDP ports")


@contextlib.contextmanager
def switchboard(tmp_path: Path, rtc_config: dict[str, Any], *also_bound: str) -> Iterator[Server]:
    """A server whose media is on 127.0.0.1, as the test fixtures' is; signalling also on `also_bound`."""
    media = {"ice_addresses": ["127.0.0.1"], **rtc_config}
    server = start_server(tmp_path / "server", {"bind_addresses": ["127.0.0.1", *also_bound], "rtc": media})
    try:
        yield server
    finally:
        stop_server(server)


async def join(server: Server, room: str, identity: str, options: rtc.RoomOptions | None = None) -> Client:
    client = Client(identity)
    await client.room.connect(server.ws_url, server.join_token(room, identity), options or rtc.RoomOptions())
    return client


async def test_a_full_port_range_refuses_the_join_at_once(tmp_path: Path) -> None:
    """One port: the first participant takes it; the next is refused with a reason, quickly; once the
    first leaves, its port serves the next join."""
    port = free_udp_range(1)
    room = f"ports-{uuid.uuid4().hex[:8]}"
    with switchboard(tmp_path, {"port_range_start": port, "port_range_end": port}) as server:
        first = await join(server, room, "first")
        try:
            started = time.monotonic()
            with pytest.raises(rtc.ConnectError) as refused:
                await join(server, room, "second")
            elapsed = time.monotonic() - started
        finally:
            await first.close()
        third = await join(server, room, "third")
        await third.close()
        log = server.log()
    print(f"\nrefused after {elapsed:.2f}s: {refused.value}")
    assert elapsed < REFUSAL_BOUND, f"the refusal took {elapsed:.1f}s"
    assert f"every UDP port of rtc.port_range_start-end ({port}-{port}) is taken" in str(refused.value)
    assert "Traceback" not in log, log


async def test_publishing_when_no_port_is_left_ends_the_session_with_a_reason(tmp_path: Path) -> None:
    """Two ports, each taken by a participant's subscriber connection: the publisher connection one of
    them opens next cannot be bound, so that participant is told to leave (JOIN_FAILURE) instead of
    waiting for an answer that cannot work. The other stays, though the offer that brings it the new
    track has no port for its new media section (bundled on the existing one once answered)."""
    start = free_udp_range(2)
    room = f"ports-{uuid.uuid4().hex[:8]}"
    with switchboard(tmp_path, {"port_range_start": start, "port_range_end": start + 1}) as server:
        stays, publisher = await join(server, room, "stays"), await join(server, room, "publisher")
        try:
            with contextlib.suppress(Exception):  # the SDK may fail the publish or see the leave first
                await asyncio.wait_for(publisher.publish_tone(), JOIN_TIMEOUT)
            [(reason,)] = await eventually(lambda: publisher.saw("disconnected"), "the publisher's leave")
            assert stays.room.connection_state == rtc.ConnectionState.CONN_CONNECTED
        finally:
            await publisher.close()
            await stays.close()
        log = server.log()
    assert reason == rtc.DisconnectReason.JOIN_FAILURE, reason
    assert f"no ICE candidate could be gathered (every UDP port of rtc.port_range_start-end ({start}-" in log


@dataclass
class Turn:
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_coturn(directory: Path, *listening: str) -> Iterator[Turn]:
    """Debian's coturn, UDP and TCP on one free port of these addresses, with one static long-term user.
    It relays from 127.0.0.1, where the server's candidates are: loopback peers, refused by default,
    are allowed."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn is missing: `apt-get install -y coturn` (`.ci/run` installs it when missing)")
    directory.mkdir(parents=True, exist_ok=True)
    turn = Turn(free_port(), directory / "turnserver.log")
    args = [binary, "-n", "--listening-port", str(turn.port)]
    args += [arg for address in listening for arg in ("--listening-ip", address)]
    args += ["--relay-ip", "127.0.0.1", "--allow-loopback-peers", "--lt-cred-mech"]
    args += ["--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM]
    args += ["--no-tls", "--no-dtls", "--no-cli", "--no-software-attribute", "--log-file", "stdout"]
    args += ["--db", str(directory / "turndb"), "--pidfile", str(directory / "turnserver.pid")]
    with turn.log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TURN_STARTUP
        while "Relay ports initialization done" not in turn.log():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not start:\n{turn.log()}")
            time.sleep(0.05)
        yield turn
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Turn]:
    with running_coturn(tmp_path_factory.mktemp("coturn"), "127.0.0.1") as turn:
        yield turn


def turn_servers(turn: Turn, host: str, protocol: str) -> list[dict[str, Any]]:
    """`rtc.turn_servers` naming this coturn, with its user."""
    server = {"host": host, "port": turn.port, "protocol": protocol}
    return [server | {"username": TURN_USER, "credential": TURN_PASSWORD}]


def relay_only() -> rtc.RoomOptions:
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_transport_type=room_pb2.TRANSPORT_RELAY))


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_clients_forced_to_relay_talk_through_turn(tmp_path: Path, coturn: Turn, protocol: str) -> None:
    """A browser and the Python SDK that may only use relay candidates (as behind a firewall that lets
    nothing else out) join and hear each other through coturn, which they learn of from the
    JoinResponse; the server's own candidates stay in the configured port range."""
    toolchain_or_fail()
    start = free_udp_range(8)
    room = f"relay-{uuid.uuid4().hex[:8]}"
    config = {
        "port_range_start": start,
        "port_range_end": start + 7,
        "turn_servers": turn_servers(coturn, "127.0.0.1", protocol),
    }
    with switchboard(tmp_path, config) as server:
        async with served_page() as page:
            python = await join(server, room, "py", relay_only())
            browser = BrowserScenario(
                server,
                page,
                "relay",
                server.join_token(room, "browser"),
                PEER_IDENTITY="py",
                ICE_POLICY="relay",
            )
            try:
                await python.publish_tone()
                await browser.start()
                heard = await eventually(
                    lambda: [level for level in python.levels if level > 1000],
                    "the browser's tone at the Python participant",
                    JOIN_TIMEOUT,
                    accept=lambda loud: len(loud) >= 2 * MIN_FRAMES,
                )
                python_pairs = await selected_local_candidates(python.room)
                browser.tell("leave")
                result = await browser.result()
            finally:
                await browser.kill()
                await python.close()
        log = server.log()
    joined, connections = result["joined"], result["connections"]
    print(f"\nrelay over {protocol}: browser heard {joined.get('heard')}; python loud frames {len(heard)}")
    assert joined["state"] == "connected", joined
    assert joined["heard"]["packetsReceived"] >= 100 and joined["heard"]["loudestAudioLevel"] > 0.1, joined
    expected_url = f"turn:127.0.0.1:{coturn.port}?transport={protocol}"
    assert len(connections) == 2, connections  # publisher and subscriber
    for connection in connections:
        assert connection["state"] == "connected", connection
        assert connection["iceTransportPolicy"] == "relay"
        assert connection["iceServers"] == [
            {"urls": [expected_url], "username": TURN_USER, "credential": TURN_PASSWORD}
        ]
        selected = connection["selected"]
        assert selected["local"]["type"] == "relay", selected
        assert selected["local"]["relayProtocol"] == protocol, selected
        assert selected["remote"]["address"] == "127.0.0.1", selected
        assert start <= selected["remote"]["port"] <= start + 7, selected
        assert connection["serverCandidates"], connection  # else the loop below checks nothing
        for line in connection["serverCandidates"]:
            assert start <= int(line.split()[5]) <= start + 7, line
    assert python_pairs == ["RELAY", "RELAY"], python_pairs
    assert "Traceback" not in log, log


async def test_host_candidates_carry_the_advertised_address(tmp_path: Path) -> None:
    """`rtc.node_ip`: the server's candidates offer it instead of the bound address (here 127.0.0.2 for
    a socket on 127.0.0.1, as a 1:1 NAT would map it). The browser's checks to 127.0.0.2 cannot reach
    that socket on loopback, so the pair that connects is the one learnt from the server's own checks
    (peer-reflexive): what is shown is the offer; the address at work through a NAT is shown by
    test_a_server_behind_one_to_one_nat_is_reached_at_its_advertised_address."""
    toolchain_or_fail()
    room = f"node-ip-{uuid.uuid4().hex[:8]}"
    with switchboard(tmp_path, {"node_ip": "127.0.0.2"}) as server:
        async with served_page() as page:
            python = await join(server, room, "py")
            token = server.join_token(room, "browser")
            browser = BrowserScenario(server, page, "relay", token, PEER_IDENTITY="py", ICE_POLICY="all")
            try:
                await python.publish_tone()
                await browser.start()
                await eventually(
                    lambda: [level for level in python.levels if level > 1000],
                    "the browser's tone at the Python participant",
                    JOIN_TIMEOUT,
                    accept=lambda loud: len(loud) >= 2 * MIN_FRAMES,
                )
                browser.tell("leave")
                result = await browser.result()
            finally:
                await browser.kill()
                await python.close()
    assert result["joined"]["heard"]["packetsReceived"] >= 100, result["joined"]
    connections = result["connections"]
    assert len(connections) == 2, connections
    for connection in connections:
        assert connection["iceServers"] == []  # none configured: none handed out
        hosts = {line.split()[4] for line in connection["serverCandidates"]}
        assert hosts == {"127.0.0.2"}, connection["serverCandidates"]
        assert connection["selected"]["remote"]["type"] == "prflx", connection["selected"]


@dataclass
class NattedNetwork:
    """A participant's network namespace behind a NAT router (a namespace of its own) whose outside end is
    on a /30 with this machine: everything the participant sends leaves the router from `nat_address`."""

    namespace: str
    """The participant's namespace."""
    host_address: str
    """The one address of this machine that the router reaches."""
    nat_address: str
    """The router's outside address, from which this machine sees the participant (masquerade)."""
    inner_address: str
    """The participant's own address, to which this machine has no route."""
    public_address: str | None
    """With `one_to_one`: the address the router maps to `host_address` (DNAT), as a cloud's 1:1 NAT maps
    a VM's public address to its private one; the participant reaches this machine only there."""


def _ip_command(*command: str, input: str | None = None) -> None:
    done = subprocess.run(command, input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed (network namespaces need root): {done.stderr}")


def _free_subnet() -> int:
    """A third octet for 10.231.x.0/28 that no address of this machine uses (another test may hold one)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    for _ in range(100):
        subnet = random.randrange(256)
        if f"10.231.{subnet}." not in used:
            return subnet
    raise RuntimeError("no free 10.231.x.0/28")


@contextlib.contextmanager
def natted_network(one_to_one: bool = False) -> Iterator[NattedNetwork]:
    """The participant's namespace (10.231.x.6/30) routes everything to a router namespace (.5), which
    masquerades it on its link to this machine (router .2, this machine .1), so nothing of this machine
    but that link's address is reachable (127.0.0.1 included), and this machine sees the router's address
    only. With `one_to_one`, the router also maps a public address (.9) to this machine's (.1) and drops
    whatever the participant sends to .1 directly. The rules live in the router's namespace: deleting the
    namespaces (always done on the way out) deletes them."""
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            pytest.fail(
                f"`{tool}` is missing: `apt-get install -y {package}` (`.ci/run` installs it when missing)"
            )
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    participant, router = f"sbnet{tag}", f"sbnat{tag}"
    host_end, outer_end, inner_end, participant_end = f"sbh{tag}", f"sbo{tag}", f"sbi{tag}", f"sbc{tag}"
    net = f"10.231.{_free_subnet()}"
    host_address, nat_address, gateway, inner_address = f"{net}.1", f"{net}.2", f"{net}.5", f"{net}.6"
    public_address = f"{net}.9" if one_to_one else None
    rules = [
        f"add table ip {router}",
        f"add chain ip {router} sb_post {{ type nat hook postrouting priority srcnat; }}",
        f'add rule ip {router} sb_post oifname "{outer_end}" masquerade',
    ]
    if public_address is not None:
        from_inside = f'iifname "{inner_end}"'
        rules += [
            f"add chain ip {router} sb_pre {{ type nat hook prerouting priority dstnat; }}",
            f"add rule ip {router} sb_pre {from_inside} ip daddr {public_address} dnat to {host_address}",
            f"add chain ip {router} sb_forward {{ type filter hook forward priority filter; }}",
            f"add rule ip {router} sb_forward {from_inside} ct original ip daddr {host_address} drop",
        ]
    in_router, in_participant = ("ip", "netns", "exec", router), ("ip", "netns", "exec", participant)
    try:
        _ip_command("ip", "netns", "add", router)
        _ip_command("ip", "netns", "add", participant)
        _ip_command("ip", "link", "add", host_end, "type", "veth", "peer", "name", outer_end, "netns", router)
        _ip_command(
            *in_router, "ip", "link", "add", inner_end, "type", "veth", "peer", "name", participant_end
        )
        _ip_command(*in_router, "ip", "link", "set", participant_end, "netns", participant)
        _ip_command("ip", "addr", "add", f"{host_address}/30", "dev", host_end)
        _ip_command("ip", "link", "set", host_end, "up")
        _ip_command(*in_router, "ip", "addr", "add", f"{nat_address}/30", "dev", outer_end)
        _ip_command(*in_router, "ip", "addr", "add", f"{gateway}/30", "dev", inner_end)
        for link in ("lo", outer_end, inner_end):
            _ip_command(*in_router, "ip", "link", "set", link, "up")
        _ip_command(*in_router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _ip_command(*in_router, "nft", "-f", "-", input="\n".join(rules) + "\n")
        _ip_command(*in_participant, "ip", "addr", "add", f"{inner_address}/30", "dev", participant_end)
        for link in ("lo", participant_end):
            _ip_command(*in_participant, "ip", "link", "set", link, "up")
        _ip_command(*in_participant, "ip", "route", "add", "default", "via", gateway)
        yield NattedNetwork(participant, host_address, nat_address, inner_address, public_address)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        for namespace in (participant, router):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def arrives_from(network: NattedNetwork, address: str) -> str | None:
    """Sends one datagram from the participant's namespace to `address`, at a port bound here on this
    machine's address on the NAT's link: the address it arrived from, or None if it did not arrive."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((network.host_address, 0))
        to = (address, sock.getsockname()[1])
        send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'?', {to!r})"
        _ip_command("ip", "netns", "exec", network.namespace, sys.executable, "-c", send)
        sock.settimeout(0.3)  # sent when the process ended; on veth links, it is here within a millisecond
        try:
            return str(sock.recvfrom(16)[1][0])
        except TimeoutError:
            return None


@dataclass
class Isolated:
    report: dict[str, Any]
    """What the participant in the namespace printed: loud frames heard, its selected pairs."""
    heard: list[float]
    """The loud levels of its tone at the participant on this machine."""


async def isolated_and_host_participants(server: Server, network: NattedNetwork, ws_url: str) -> Isolated:
    """A Python SDK participant in the namespace (`tests.isolated_participant`, signalling at `ws_url`)
    and one here, in a fresh room, each publishing a tone until it hears the other's."""
    room = f"isolated-{uuid.uuid4().hex[:8]}"
    isolated: asyncio.subprocess.Process | None = None
    host = await join(server, room, "host")
    try:
        await host.publish_tone()
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env |= {
            "SWITCHBOARD_WS_URL": ws_url,
            "PARTICIPANT_TOKEN": server.join_token(room, "isolated"),
            "PEER_IDENTITY": "host",
            "HEAR_TIMEOUT": str(JOIN_TIMEOUT),
        }
        isolated = await asyncio.create_subprocess_exec(
            *("ip", "netns", "exec", network.namespace, sys.executable),
            *("-m", "tests.isolated_participant"),
            cwd=REPOSITORY,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert isolated.stdout is not None and isolated.stdin is not None
        line = await asyncio.wait_for(isolated.stdout.readline(), JOIN_TIMEOUT + 10)
        if not line:
            stderr = await isolated.stderr.read() if isolated.stderr else b""
            pytest.fail(f"the isolated participant ended:\n{stderr.decode(errors='replace')}")
        report = json.loads(line)
        heard = await eventually(
            lambda: [level for level in host.levels if level > 1000],
            "the isolated participant's tone on the host",
            JOIN_TIMEOUT,
            accept=lambda loud: len(loud) >= 2 * MIN_FRAMES,
        )
        isolated.stdin.close()
        await asyncio.wait_for(isolated.wait(), 10)
    finally:
        if isolated is not None and isolated.returncode is None:
            isolated.kill()
            await isolated.wait()
        await host.close()
    return Isolated(report, heard)


async def test_a_participant_behind_nat_that_reaches_only_the_turn_server_joins_through_it(
    tmp_path: Path,
) -> None:
    """A Python SDK participant in its own network namespace, behind a NAT, reaches this machine at one
    address, where signalling and coturn listen; the server's media candidates (127.0.0.1) are out of its
    reach, as behind a firewall. It is not told to relay: its ICE finds that only the TURN server of the
    JoinResponse works, and it hears and is heard by a participant on the host. coturn sees it at the
    NAT's address, not its own."""
    with natted_network() as network:
        outside = network.host_address
        with (
            running_coturn(tmp_path / "coturn", outside) as turn,
            switchboard(tmp_path, {"turn_servers": turn_servers(turn, outside, "udp")}, outside) as server,
        ):
            isolated = await isolated_and_host_participants(
                server, network, server.ws_url.replace("127.0.0.1", outside)
            )
            log = server.log()
    report = isolated.report
    print(f"\nisolated participant behind NAT: {report}; host heard {len(isolated.heard)} loud frames")
    assert report["loudFrames"] >= 100, report
    assert report["selected"] == ["RELAY", "RELAY"], report
    # coturn answers an allocation with the address it saw the request come from (XOR-MAPPED-ADDRESS, the
    # relay candidate's related address): the NAT's, not the participant's own.
    assert {pair["local"]["related"] for pair in report["pairs"]} == {network.nat_address}, report
    assert "Traceback" not in log, log


async def test_a_server_behind_one_to_one_nat_is_reached_at_its_advertised_address(tmp_path: Path) -> None:
    """`rtc.node_ip` as behind a cloud's 1:1 NAT: the server's media is bound to this machine's address on
    the NAT's link, which the participant behind the NAT cannot reach; the NAT maps a public address to
    it, and node_ip advertises that one. The participant's ICE connects to the server's host candidates
    at the public address (no pair can be learnt the other way: the server's checks cannot reach the
    participant's own address), and it hears and is heard by a participant on this machine. A datagram
    sent from behind the NAT to the bound address does not arrive: a node_ip other than the mapped address
    (or none, which offers the bound address) would leave the participant nothing to connect to."""
    with natted_network(one_to_one=True) as network:
        assert network.public_address is not None
        assert arrives_from(network, network.public_address) == network.nat_address
        assert arrives_from(network, network.host_address) is None
        config = {"ice_addresses": [network.host_address], "node_ip": network.public_address}
        with switchboard(tmp_path, config, network.host_address) as server:
            isolated = await isolated_and_host_participants(
                server, network, server.ws_url.replace("127.0.0.1", network.public_address)
            )
            log = server.log()
    report = isolated.report
    print(
        f"\nparticipant behind NAT, server behind 1:1 NAT: {report}; host heard {len(isolated.heard)} frames"
    )
    assert report["loudFrames"] >= 100, report
    assert len(report["pairs"]) == 2, report  # publisher and subscriber
    for pair in report["pairs"]:
        assert pair["remote"]["type"] == "HOST" and pair["remote"]["address"] == network.public_address, pair
        # Its own side of the pair is the address the server's answers said they saw its checks come from
        # (peer-reflexive): the NAT's.
        assert pair["local"]["type"] == "PRFLX" and pair["local"]["address"] == network.nat_address, pair
    assert "Traceback" not in log, log
