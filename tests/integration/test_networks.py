"""Rooms across networks, with the official clients: the UDP port range of the server's ICE candidates,
the address it advertises in them (`rtc.node_ip`), and TURN (a real coturn started here) for clients
forced to relay, over UDP and over TCP, and for a client in a network namespace that reaches nothing
else of this machine.
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
    (peer-reflexive): what is shown is the offer, not a NAT."""
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
class IsolatedNetwork:
    namespace: str
    host_address: str
    """The one address of this machine that the namespace reaches."""


@pytest.fixture
def isolated_network() -> Iterator[IsolatedNetwork]:
    """A network namespace joined to this machine by one veth pair on a /30 of its own: from inside, only
    the host's end of the pair answers. Nothing else of the machine (127.0.0.1 included) is reachable."""
    if shutil.which("ip") is None:
        pytest.fail("`ip` (iproute2) is missing: the network namespace tests need it, and root")
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    namespace, host_end, inner_end = f"sbnet{tag}", f"sbh{tag}", f"sbc{tag}"
    subnet = random.randrange(256)
    host_address, inner_address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    def ip(*args: str, inside: bool = False) -> None:
        command = ["ip", "netns", "exec", namespace, "ip", *args] if inside else ["ip", *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed (network namespaces need root): {done.stderr}")

    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", inner_end)
        ip("link", "set", inner_end, "netns", namespace)
        ip("addr", "add", f"{host_address}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("addr", "add", f"{inner_address}/30", "dev", inner_end, inside=True)
        ip("link", "set", inner_end, "up", inside=True)
        ip("link", "set", "lo", "up", inside=True)
        yield IsolatedNetwork(namespace, host_address)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


async def test_a_participant_that_reaches_only_the_turn_server_joins_through_it(
    tmp_path: Path, isolated_network: IsolatedNetwork
) -> None:
    """A Python SDK participant in its own network namespace reaches this machine at one address, where
    signalling and coturn listen; the server's media candidates (127.0.0.1) are out of its reach, as
    behind a firewall. It is not told to relay: its ICE finds that only the TURN server of the
    JoinResponse works, and it hears and is heard by a participant on the host."""
    outside = isolated_network.host_address
    room = f"isolated-{uuid.uuid4().hex[:8]}"
    with (
        running_coturn(tmp_path / "coturn", outside) as turn,
        switchboard(tmp_path, {"turn_servers": turn_servers(turn, outside, "udp")}, outside) as server,
    ):
        isolated: asyncio.subprocess.Process | None = None
        host = await join(server, room, "host")
        try:
            await host.publish_tone()
            env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
            env |= {
                "SWITCHBOARD_WS_URL": server.ws_url.replace("127.0.0.1", outside),
                "PARTICIPANT_TOKEN": server.join_token(room, "isolated"),
                "PEER_IDENTITY": "host",
                "HEAR_TIMEOUT": str(JOIN_TIMEOUT),
            }
            isolated = await asyncio.create_subprocess_exec(
                *("ip", "netns", "exec", isolated_network.namespace, sys.executable),
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
        log = server.log()
    print(f"\nisolated participant: {report}; host heard {len(heard)} loud frames")
    assert report["loudFrames"] >= 100, report
    assert report["selected"] == ["RELAY", "RELAY"], report
    assert "Traceback" not in log, log
