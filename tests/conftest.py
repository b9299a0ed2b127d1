"""Shared fixtures: a real Switchboard server process per test module, and tokens for it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit import api

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

API_KEY = "testkey"
API_SECRET = "test-secret-that-is-long-enough-for-hs256"
STARTUP_DEADLINE = 20.0


@dataclass
class Server:
    http_url: str
    api_key: str
    api_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://")

    def token(self, ttl: float = 600, **grants: Any) -> str:
        """A token with these video grants (snake_case), e.g. token(room_admin=True, room="r")."""
        return mint_token(self.api_key, self.api_secret, video=VideoGrant(**grants), ttl=ttl)

    def join_token(
        self,
        room: str,
        identity: str,
        *,
        agents: list[dict[str, str]] | None = None,
        profile: dict[str, Any] | None = None,
        **grants: Any,
    ) -> str:
        """A participant's token for `room`, as `switchboard token create --join` mints it.

        `agents` become roomConfig.agents (e.g. [{"agentName": "x"}]); `profile` sets the token's `name`,
        `metadata`, `attributes` or `kind`; `grants` add or override video grants.
        """
        video = VideoGrant(**{"room_join": True, "room": room, "can_update_own_metadata": True, **grants})
        config = {"agents": agents} if agents else None
        return mint_token(
            self.api_key,
            self.api_secret,
            video=video,
            identity=identity,
            room_config=config,
            **(profile or {}),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def unique(prefix: str) -> str:
    """A name no other test uses (rooms, agents), so tests sharing a module's server stay apart."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(directory: Path, config: dict[str, Any] | None = None, *args: str) -> Server:
    """Start `switchboard serve` as a user would, and wait (with a deadline) until it answers."""
    port = free_port()
    settings: dict[str, Any] = {
        "keys": {API_KEY: API_SECRET},
        "bind_addresses": ["127.0.0.1"],
        "port": port,
        "rtc": {"ice_addresses": ["127.0.0.1"]},  # media stays on loopback (on the server's side)
    }
    settings.update(config or {})
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "switchboard.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    log_path = directory / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "serve", "--config", str(config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", API_KEY, API_SECRET, process, log_path)
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.http_url + "/", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not answer within {STARTUP_DEADLINE}s:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module, with short timeouts so tests that wait for deadlines stay fast."""
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        {"room": {"empty_timeout": 300, "departure_timeout": 20}, "logging": {"level": "debug"}},
    )
    yield instance
    stop_server(instance)


@pytest.fixture
async def lkapi(server: Server) -> AsyncIterator[api.LiveKitAPI]:
    """The Python server SDK (livekit-api), on the module's server."""
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as client:
        yield client


@pytest.fixture
def workers(server: Server, agent_workers: Any) -> Any:
    """Start real livekit-agents worker processes (tests/agents/worker.py) against this module's server;
    they are killed, with their job processes, when the test ends."""

    def start(agent_name: str = "", behaviour: str = "shutdown", secret: str = "", **settings: str) -> Any:
        return agent_workers(server, agent_name, behaviour, secret, **settings)

    return start


@pytest.fixture
def agent_workers(tmp_path: Path) -> Iterator[Any]:
    """`agent_workers(server, agent_name, behaviour, secret="", **settings)`: a real livekit-agents worker
    process (tests/agents/worker.py) against any server (a process, a cluster's node, or in this process);
    killed, with its job processes, after the test. `settings`: more of its TEST_* variables."""
    from tests.agent_workers import AgentWorker  # it imports this module
    from tests.protocol_worker import Endpoint

    started: list[AgentWorker] = []

    def start(
        server: Endpoint,
        agent_name: str = "",
        behaviour: str = "shutdown",
        secret: str = "",
        **settings: str,
    ) -> AgentWorker:
        directory = tmp_path / f"worker{len(started)}"
        worker = AgentWorker(server, directory, agent_name, behaviour, secret, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
