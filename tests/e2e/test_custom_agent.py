"""examples/greeter.py, the README's custom agent: a livekit-agents program of the user's own that loads its
agent-NAME.yaml with Switchboard's API, registers by OpenVidu's rule, and is dispatched by a token."""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import rtc

from tests.agent_workers import eventually, registered
from tests.conftest import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Greeter:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def greeter(server: Server, tmp_path: Path) -> Iterator[Greeter]:
    log_path = tmp_path / "greeter.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "AGENT_CONFIG"))}
    env.update(
        AGENT_CONFIG_FILE=str(EXAMPLES / "agent-greeter.yaml"),
        LIVEKIT_URL=server.ws_url,
        LIVEKIT_API_KEY=server.api_key,
        LIVEKIT_API_SECRET=server.api_secret,
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "greeter.py")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield Greeter(process, log_path)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def greeted(server: Server, room_name: str) -> tuple[rtc.Room, list[tuple[str, str]]]:
    """A participant whose token dispatches the greeter, once it has been greeted."""
    room = rtc.Room()
    said: list[tuple[str, str]] = []
    readers: set[asyncio.Future[None]] = set()

    def on_chat(reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            said.append((sender, await reader.read_all()))

        readers.add(asyncio.ensure_future(read()))

    room.register_text_stream_handler("lk.chat", on_chat)
    token = server.join_token(room_name, "alice", agents=[{"agentName": "greeter"}])
    await room.connect(server.ws_url, token)
    await eventually(lambda: said, "the greeting")
    return room, said


async def test_the_custom_agent_joins_when_a_token_asks_for_it(server: Server, greeter: Greeter) -> None:
    await registered(server, "greeter")
    room, said = await greeted(server, "greeted")
    await room.disconnect()
    [(sender, text)] = said
    assert sender.startswith("agent-AJ_") and text == "Hello from a custom agent"
    assert "agent 'greeter' starting; dispatch explicit, as agent_name 'greeter'" in greeter.log()


async def test_sigterm_drains_and_a_second_signal_stops_at_once(server: Server, greeter: Greeter) -> None:
    await eventually(lambda: "registered worker" in greeter.log(), "this greeter to register")
    room, _ = await greeted(server, f"drained-{uuid.uuid4().hex[:8]}")
    try:
        greeter.process.send_signal(signal.SIGTERM)
        await eventually(lambda: "draining worker" in greeter.log(), "the agent to drain")
        assert greeter.process.poll() is None  # its job goes on while the participant stays
        greeter.process.send_signal(signal.SIGTERM)
        await eventually(lambda: greeter.process.poll() is not None, "the agent to stop")
    finally:
        await room.disconnect()
    assert greeter.process.returncode == 0 and "stopping now: running jobs are closed" in greeter.log()
