"""A singleton agent (`agents.singleton`) with the Python server SDK and a real livekit-agents worker: three
CreateDispatch calls, sent at once, give one dispatch and one agent in the room; it leaves after the third
DeleteDispatch; the Node server SDK gets the shared dispatch as well. An agent run by the server from
`agents_dir` is singleton when its config says so."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from tests.agent_workers import eventually, registered
from tests.conftest import Server, start_server, stop_server
from tests.integration.test_cli import run as cli
from tests.node_clients import run_scenario


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(tmp_path_factory.mktemp("server"), {"agents": {"singleton": ["solo-bot"]}})
    yield instance
    stop_server(instance)


async def agents_in(lkapi: api.LiveKitAPI, room: str) -> list[str]:
    response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return [p.identity for p in response.participants if p.kind == api.ParticipantInfo.AGENT]


async def test_three_dispatches_one_agent_that_leaves_after_the_third_delete(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    workers("solo-bot", "stay")
    await registered(server, "solo-bot")
    room = "singleton-room"
    await lkapi.room.create_room(api.CreateRoomRequest(name=room, agents=[]))
    request = api.CreateAgentDispatchRequest(agent_name="solo-bot", room=room)
    created = await asyncio.gather(*(lkapi.agent_dispatch.create_dispatch(request) for _ in range(3)))
    assert len({d.id for d in created}) == 1
    dispatch_id = created[0].id
    [agent] = await eventually(lambda: agents_in(lkapi, room), "the agent in the room")
    solo = [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.agent_name == "solo-bot"]
    assert [d.id for d in solo] == [dispatch_id] and len(solo[0].state.jobs) == 1

    for _ in range(2):
        kept = await lkapi.agent_dispatch.delete_dispatch(dispatch_id, room)
        assert kept.id == dispatch_id and kept.state.deleted_at == 0
        assert await agents_in(lkapi, room) == [agent]
    [still] = [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.id == dispatch_id]
    assert still.state.jobs[-1].state.status == api.JS_RUNNING

    deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch_id, room)
    assert deleted.state.deleted_at > 0
    await eventually(lambda: agents_in(lkapi, room), "the agent leaving", accept=lambda found: found == [])
    assert [d.agent_name for d in await lkapi.agent_dispatch.list_dispatch(room)] == [""]


async def test_an_agent_config_that_says_singleton_makes_it_one_per_room(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    config = agents / "agent-solo-captions.yaml"
    config.write_text("singleton: true\nlive_captions:\n  processing: manual\n  provider: pocketsphinx\n")
    assert json.loads(cli(None, "agent", "check", str(config), "--json").stdout)["singleton"] is True
    instance = start_server(tmp_path / "server", {}, "--agents", str(agents))
    try:
        async with api.LiveKitAPI(instance.http_url, instance.api_key, instance.api_secret) as lkapi:
            request = api.CreateAgentDispatchRequest(agent_name="solo-captions", room="captioned")
            first = await lkapi.agent_dispatch.create_dispatch(request)
            assert (await lkapi.agent_dispatch.create_dispatch(request)).id == first.id
            other = api.CreateAgentDispatchRequest(agent_name="not-singleton", room="captioned")
            assert (await lkapi.agent_dispatch.create_dispatch(other)).id != (
                await lkapi.agent_dispatch.create_dispatch(other)
            ).id
    finally:
        stop_server(instance)


async def test_the_node_sdk_gets_the_shared_dispatch_too(server: Server, lkapi: api.LiveKitAPI) -> None:
    request = api.CreateAgentDispatchRequest(agent_name="solo-bot", room="node-singleton", metadata="first")
    first = await lkapi.agent_dispatch.create_dispatch(request)
    result = await run_scenario(
        server,
        "create-dispatch",
        SCENARIO_ROOM="node-singleton",
        SCENARIO_AGENT="solo-bot",
        SCENARIO_METADATA="second",
    )
    assert (result["created"]["id"], result["created"]["metadata"]) == (first.id, "first")
