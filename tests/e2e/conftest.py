"""Fixtures of the end-to-end modules."""

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Server
from tests.e2e.captions import Join
from tests.speech import Speaker


@pytest.fixture
async def speakers(server: Server) -> AsyncIterator[Join]:
    """Join Python rtc participants that speak and read captions; they leave after the test."""
    joined: list[Speaker] = []

    async def join(identity: str, room: str, agents: list[str] | None = None) -> Speaker:
        speaker = Speaker(identity)
        joined.append(speaker)
        entries = [{"agentName": name} for name in agents or []]
        await speaker.join(server.ws_url, server.join_token(room, identity, agents=entries))
        return speaker

    yield join
    for speaker in joined:
        await speaker.leave()
