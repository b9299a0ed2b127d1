"""Rooms across networks, with the official clients: the UDP port range of the server's ICE candidates,
the address it advertises in them (`rtc.node_ip`), and TURN (a real coturn started here) for clients
forced to relay, over UDP and over TCP.
"""

import contextlib
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc._proto import room_pb2, stats_pb2

from tests.browser import JOIN_TIMEOUT, BrowserScenario, served_page, toolchain_or_fail
from tests.conftest import Server, free_port, start_server, stop_server
from tests.integration.test_browser import MIN_FRAMES
from tests.integration.test_rtc_python import Client
from tests.polling import eventually

TURN_USER, TURN_PASSWORD, TURN_REALM = "switchboard", "relay-password", "switchboard.test"
TURN_STARTUP = 10.0

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
def switchboard(tmp_path: Path, rtc_config: dict[str, Any]) -> Iterator[Server]:
    server = start_server(tmp_path / "server", {"rtc": {"ice_addresses": ["127.0.0.1"], **rtc_config}})
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


@dataclass
class Turn:
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Turn]:
    """Debian's coturn on loopback, UDP and TCP on one free port, with one static long-term user.
    Loopback peers (the server's candidates here) are refused by default, so they are allowed."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail(
            "coturn is not installed: `apt-get install -y coturn` (`.ci/run` installs it when missing)"
        )
    directory = tmp_path_factory.mktemp("coturn")
    turn = Turn(free_port(), directory / "turnserver.log")
    args = [binary, "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(turn.port)]
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


def relay_only() -> rtc.RoomOptions:
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_transport_type=room_pb2.TRANSPORT_RELAY))


async def selected_local_candidates(client: Client) -> list[int]:
    """The type of the local candidate of each connection's selected pair (IceCandidateType values)."""
    stats = await client.room.get_rtc_stats()
    types = []
    for report in (stats.publisher_stats, stats.subscriber_stats):
        by_id = {s.WhichOneof("stats") and getattr(s, s.WhichOneof("stats")).rtc.id: s for s in report}
        for s in report:
            if s.WhichOneof("stats") == "transport" and s.transport.transport.selected_candidate_pair_id:
                pair = by_id[s.transport.transport.selected_candidate_pair_id].candidate_pair.candidate_pair
                types.append(by_id[pair.local_candidate_id].local_candidate.candidate.candidate_type)
    return types


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
        "turn_servers": [
            {"host": "127.0.0.1", "port": coturn.port, "protocol": protocol}
            | {"username": TURN_USER, "credential": TURN_PASSWORD}
        ],
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
                python_pairs = await selected_local_candidates(python)
                browser.tell("leave")
                result = await browser.result()
            finally:
                await browser.kill()
                await python.close()
        log = server.log()
    joined, connections = result["joined"], result["connections"]
    print(f"\nrelay over {protocol}: browser heard {joined.get('heard')}; python loud frames {len(heard)}")
    assert joined["state"] == "connected", joined
    assert joined["heard"]["packetsReceived"] >= 100 and joined["heard"]["audioLevel"] > 0.1, joined
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
        for line in connection["serverCandidates"]:
            assert start <= int(line.split()[5]) <= start + 7, line
    assert python_pairs and all(t == stats_pb2.IceCandidateType.RELAY for t in python_pairs), python_pairs
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
