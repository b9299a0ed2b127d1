"""examples/greeter.py, the README's custom agent: a livekit-agents program of the user's own that loads its
agent-NAME.yaml with Switchboard's API, registers by OpenVidu's rule, and is dispatched by a token."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import rtc

from tests.agent_workers import eventually, registered
from tests.conftest import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def greeter(server: Server, tmp_path: Path) -> Iterator[Path]:
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
    yield log_path
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def test_the_custom_agent_joins_when_a_token_asks_for_it(server: Server, greeter: Path) -> None:
    await registered(server, "greeter")
    room = rtc.Room()
    said: list[tuple[str, str]] = []
    readers: set[asyncio.Future[None]] = set()

    def on_chat(reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            said.append((sender, await reader.read_all()))

        readers.add(asyncio.ensure_future(read()))

    room.register_text_stream_handler("lk.chat", on_chat)
    await room.connect(
        server.ws_url, server.join_token("greeted", "alice", agents=[{"agentName": "greeter"}])
    )
    try:
        [(sender, text)] = await eventually(lambda: said, "the greeting")
        assert sender.startswith("agent-AJ_") and text == "Hello from a custom agent"
    finally:
        await room.disconnect()
    log = greeter.read_text()  # noqa: ASYNC240 (a small file, read once)
    assert "agent 'greeter' starting; dispatch explicit, as agent_name 'greeter'" in log
