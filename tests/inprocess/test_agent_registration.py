"""Real, unmodified livekit-agents worker processes against an in-process server: who the engine counts
as registered, read from the engine rather than from the log."""

from collections.abc import Callable

from tests.agent_workers import AgentWorker
from tests.inprocess.conftest import AppServer, StartApp
from tests.polling import eventually

StartWorker = Callable[..., AgentWorker]


async def test_a_worker_registers_once_and_leaves_the_engine_when_it_dies(
    start_app: StartApp, agent_workers: StartWorker
) -> None:
    server = await start_app()
    worker = agent_workers(server, "counted")
    [worker_id] = await eventually(lambda: server.workers_named("counted"), "the worker to register")
    assert worker_id in server.hub.sessions and len(server.engine.workers) == 1
    worker.kill()
    await eventually(lambda: not server.engine.workers, "the killed worker to leave the engine")
    assert not server.hub.sessions


async def test_a_worker_with_a_bad_secret_is_refused_before_the_upgrade(
    start_app: StartApp, agent_workers: StartWorker
) -> None:
    server: AppServer = await start_app()
    worker = agent_workers(server, "intruder", secret="not-the-right-secret-not-the-right-secret")
    await eventually(lambda: "401" in worker.log(), "the worker to report the 401 refusal")
    assert not server.engine.workers and not server.hub.sessions
    assert worker.process.poll() is None, "a refused worker backs off and retries; it was not crashed"
