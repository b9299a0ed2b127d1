"""What the captions end-to-end modules share: a server running agents from a directory, and speakers."""

import itertools
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from livekit import api

from tests.agent_workers import eventually
from tests.conftest import Server, start_server, stop_server
from tests.speech import SENTENCES, Caption, Speaker

CAPTIONS_DEADLINE = 60.0  # generous: the agent's job process starts, joins, subscribes, then decodes

Join = Callable[..., Awaitable[Speaker]]


def captions_agent(processing: str, extra: str = "") -> str:
    return f"{extra}live_captions:\n  processing: {processing}\n  provider: pocketsphinx\n"


def serve_agents(tmp_path_factory: pytest.TempPathFactory, agents: dict[str, str]) -> Iterator[Server]:
    """A server that runs the given agent-NAME.yaml files (name → YAML) itself, as `serve --agents` does."""
    directory = tmp_path_factory.mktemp("agents")
    for name, text in agents.items():
        (directory / f"agent-{name}.yaml").write_text(text)
    settings = {
        "agents_dir": str(directory),
        # Quick restarts, and a short drain so the module's server stops quickly.
        "agents": {"restart_delay": 0.2, "drain_timeout": 1},
        "logging": {"level": "debug"},
    }
    server = start_server(tmp_path_factory.mktemp("server"), settings)
    yield server
    stop_server(server)


def new_room() -> str:
    return f"captions-{uuid.uuid4().hex[:8]}"


async def captioned(speaker: Speaker) -> Caption:
    """Speak until a final caption of this speaker's own track arrives; return it."""

    def own_final() -> Caption | None:
        return next((c for c in speaker.finals() if c.sender == speaker.identity), None)

    sentences = itertools.cycle(SENTENCES)

    async def speak_and_check() -> Caption | None:
        await speaker.say(next(sentences))
        return own_final()

    caption: Caption = await eventually(speak_and_check, "a final caption", CAPTIONS_DEADLINE)
    assert caption.text.strip()
    assert caption.attributes["lk.transcribed_track_id"] == speaker.track_sid
    assert caption.attributes["lk.segment_id"].startswith("SG_")
    return caption


async def dispatches_of(lkapi: api.LiveKitAPI, room: str, agent_name: str) -> list[Any]:
    return [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.agent_name == agent_name]


def started_pids(server: Server, name: str) -> list[int]:
    """The process ids the supervisor started for agent `name`, in order."""
    return [int(pid) for pid in re.findall(rf"agent {re.escape(name)} started pid=(\d+)", server.log())]
