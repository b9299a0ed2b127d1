"""Real, unmodified livekit-agents worker processes against a running server: the dispatch paths end to end.

The worker program is `tests/agents/worker.py`; each job it runs writes what it received to a file, so the
tests see exactly what reached the entrypoint.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from tests.agent_workers import eventually, registered
from tests.conftest import Server, start_server, stop_server, unique
from tests.node_clients import run_scenario


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        {
            "agents": {
                "availability_timeout": 3,
                "pending_timeout": 60,
                "reconnect_grace": 1,
                "start_timeout": 20,
            },
            "logging": {"level": "debug"},
        },
    )
    yield instance
    stop_server(instance)


async def dispatch_to(lkapi: api.LiveKitAPI, agent_name: str, prefix: str) -> tuple[str, api.AgentDispatch]:
    """A dispatch of `agent_name` to a fresh room, created by CreateDispatch."""
    room = unique(prefix)
    request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
    return room, await lkapi.agent_dispatch.create_dispatch(request)


async def job_state(lkapi: api.LiveKitAPI, room: str, dispatch_id: str) -> api.Job | None:
    dispatch = await lkapi.agent_dispatch.get_dispatch(dispatch_id, room)
    return dispatch.state.jobs[-1] if dispatch and dispatch.state.jobs else None


async def job_status(lkapi: api.LiveKitAPI, room: str, dispatch_id: str, status: int) -> api.Job | None:
    job = await job_state(lkapi, room, dispatch_id)
    return job if job is not None and job.state.status == status else None


async def test_automatic_worker_gets_a_job_for_every_new_room(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    worker = workers("", "shutdown")
    rooms = [unique("auto"), unique("auto")]
    await lkapi.room.create_room(api.CreateRoomRequest(name=rooms[0]))
    # a room created by CreateDispatch for another agent also gets the automatic agent
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="someone", room=rooms[1])
    )
    jobs = await eventually(lambda: len(worker.jobs()) >= 2 and worker.jobs(), "two automatic jobs")
    assert sorted(j["room"] for j in jobs.values()) == sorted(rooms)
    assert all(j["agent_name"] == "" for j in jobs.values())
    [automatic] = [d for d in await lkapi.agent_dispatch.list_dispatch(rooms[0]) if d.agent_name == ""]
    job = await eventually(lambda: job_status(lkapi, rooms[0], automatic.id, api.JS_SUCCESS), "job success")
    assert job.state.worker_id.startswith("AW_") and job.state.participant_identity == f"agent-{job.id}"
    assert job.state.started_at > 0 and job.state.ended_at >= job.state.started_at


async def test_explicit_dispatch_from_the_python_sdk_reaches_the_entrypoint(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    worker = workers("py-bot", "shutdown")
    room = unique("explicit")
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="py-bot", room=room, metadata='{"lang": "en"}')
    )
    jobs = await eventually(worker.jobs, "the job at the entrypoint")
    [record] = jobs.values()
    assert (record["room"], record["dispatch_id"], record["metadata"]) == (
        room,
        dispatch.id,
        '{"lang": "en"}',
    )
    assert record["agent_name"] == "py-bot" and record["worker_id"].startswith("AW_")
    claims = record["token_claims"]
    assert claims["kind"] == "agent" and claims["sub"] == f"agent-{record['job_id']}"
    assert (
        claims["video"]["roomJoin"] is True and claims["video"]["room"] == room and claims["video"]["agent"]
    )
    assert claims["attributes"] == {"test": "yes", "lk.agent.name": "py-bot", "lk.agent_name": "py-bot"}
    assert claims["name"] == "Test Agent" and claims["iss"] == server.api_key
    assert 3500 <= claims["exp"] - claims["nbf"] <= 3600
    job = await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_SUCCESS), "job success")
    assert job.id == record["job_id"] and job.state.error == ""


async def test_explicit_dispatch_from_the_node_sdk(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    worker = workers("node-bot", "shutdown")
    room = unique("node")
    result = await run_scenario(
        server,
        "create-dispatch",
        SCENARIO_ROOM=room,
        SCENARIO_AGENT="node-bot",
        SCENARIO_METADATA="from node",
    )
    dispatch_id = result["created"]["id"]
    [record] = (await eventually(worker.jobs, "the node-dispatched job")).values()
    assert (record["room"], record["dispatch_id"], record["metadata"]) == (room, dispatch_id, "from node")
    await eventually(lambda: job_status(lkapi, room, dispatch_id, api.JS_SUCCESS), "job success")


async def test_create_room_with_agents(server: Server, workers: Any, lkapi: api.LiveKitAPI) -> None:
    worker = workers("room-bot", "shutdown")
    room = unique("with-agents")
    await lkapi.room.create_room(
        api.CreateRoomRequest(name=room, agents=[api.RoomAgentDispatch(agent_name="room-bot", metadata="rm")])
    )
    [record] = (await eventually(worker.jobs, "the room's agent job")).values()
    assert (record["room"], record["metadata"], record["agent_name"]) == (room, "rm", "room-bot")


async def test_worker_started_after_the_dispatch_still_gets_the_job(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    room, dispatch = await dispatch_to(lkapi, "late-bot", "late")
    job = await job_state(lkapi, room, dispatch.id)
    assert job is not None and job.state.status == api.JS_PENDING and job.state.worker_id == ""
    worker = workers("late-bot", "shutdown")
    [record] = (await eventually(worker.jobs, "the pending job, once a worker registered")).values()
    assert record["job_id"] == job.id
    await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_SUCCESS), "job success")


async def test_worker_killed_mid_job_is_replaced_by_another(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    first = workers("crashy", "hang")
    room, dispatch = await dispatch_to(lkapi, "crashy", "crash")
    [record] = (await eventually(first.jobs, "the job on the first worker")).values()
    running = await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_RUNNING), "job running")
    assert running.state.worker_id == record["worker_id"]
    second = workers("crashy", "hang")
    await registered(server, "crashy", 2)

    first.kill()
    [again] = (await eventually(second.jobs, "the job re-dispatched to the second worker")).values()
    assert again["job_id"] == record["job_id"] and again["worker_id"] != record["worker_id"]
    moved = await eventually(
        lambda: job_status(lkapi, room, dispatch.id, api.JS_RUNNING), "job running on the second worker"
    )
    assert moved.state.worker_id == again["worker_id"]
    assert moved.state.error == "", "the running attempt carries no earlier attempt's error"
    # The first attempt is listed before it, with its worker and why it ended.
    listed = await lkapi.agent_dispatch.get_dispatch(dispatch.id, room)
    assert listed is not None
    first_attempt, current = listed.state.jobs
    assert first_attempt.id == current.id == record["job_id"]
    assert first_attempt.state.status == api.JS_FAILED
    assert first_attempt.state.worker_id == record["worker_id"]
    assert first_attempt.state.error == f"worker {record['worker_id']} disconnected", "why it moved is kept"

    # DeleteDispatch terminates it on the second worker: its process shuts down.
    deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch.id, room)
    assert deleted.state.jobs[-1].state.error == "terminated: dispatch deleted"
    await eventually(lambda: second.ended(again["job_id"]), "the job's shutdown on the second worker")


async def test_rejecting_worker_passes_the_job_to_the_next(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    picky = workers("choosy", "reject")
    await registered(server, "choosy", 1)
    willing = workers("choosy", "shutdown")
    await registered(server, "choosy", 2)
    room, dispatch = await dispatch_to(lkapi, "choosy", "reject")
    [record] = (await eventually(willing.jobs, "the job on the willing worker")).values()
    assert record["dispatch_id"] == dispatch.id and picky.jobs() == {}
    await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_SUCCESS), "job success")


async def test_declining_with_terminate_ends_the_job(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    workers("decliner", "decline")
    room, dispatch = await dispatch_to(lkapi, "decliner", "decline")
    job = await eventually(
        lambda: job_status(lkapi, room, dispatch.id, api.JS_SUCCESS), "job ended by decline"
    )
    assert "declined the job" in job.state.error


async def test_delete_dispatch_terminates_a_running_job(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    worker = workers("stopper", "hang")
    room, dispatch = await dispatch_to(lkapi, "stopper", "terminate")
    [record] = (await eventually(worker.jobs, "the job")).values()
    await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_RUNNING), "job running")
    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
    await eventually(lambda: worker.ended(record["job_id"]), "the job's shutdown after DeleteRoom")
    # The closed room's dispatch stays listed, as it ended.
    ended = await job_status(lkapi, room, dispatch.id, api.JS_SUCCESS)
    assert ended is not None and ended.state.error == "terminated: room closed (deleted by API request)"


async def test_entrypoint_that_raises_ends_the_job(
    server: Server, workers: Any, lkapi: api.LiveKitAPI
) -> None:
    worker = workers("raiser", "raise")
    room, dispatch = await dispatch_to(lkapi, "raiser", "raise")
    await eventually(worker.jobs, "the job")
    # livekit-agents reports an entrypoint exception as a clean exit (JS_SUCCESS); the job must not hang.
    job = await eventually(lambda: job_status(lkapi, room, dispatch.id, api.JS_SUCCESS), "job ended")
    assert job.state.ended_at > 0
