"""SIGTERM: the server stops taking work, lets running jobs go on for the grace period, then ends them."""

import re
import signal
import time
from pathlib import Path

import pytest
from livekit import api

from tests.agent_workers import AgentWorker, eventually
from tests.conftest import start_server, stop_server

EXIT_DEADLINE = 20.0


async def test_sigterm_drains_running_jobs_then_terminates_them(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", {"agents": {"drain_timeout": 3}})
    worker = AgentWorker(server, tmp_path / "worker", "drainer", "hang")
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            dispatch = await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="drainer", room="drain-room")
            )
            [job_id] = await eventually(worker.jobs, "the job to start")

            async def running() -> bool:
                found = await lkapi.agent_dispatch.get_dispatch(dispatch.id, "drain-room")
                return found is not None and found.state.jobs[0].state.status == api.JS_RUNNING

            await eventually(running, "the job to run")
            server.process.send_signal(signal.SIGTERM)

            async def refused() -> api.TwirpError | None:
                try:
                    await lkapi.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(agent_name="drainer", room="too-late")
                    )
                except api.TwirpError as exc:
                    return exc
                return None

            error = await eventually(refused, "new dispatches to be refused while draining")
            assert (error.code, error.status) == ("unavailable", 503) and "shutting down" in error.message
            assert not worker.ended(job_id), "running jobs go on during the grace period"

        await eventually(lambda: worker.ended(job_id), "the job to be terminated after the grace period")
        assert server.process.wait(timeout=EXIT_DEADLINE) == 0
        # A dispatch sent as the signal arrives may have been accepted just before the drain began.
        terminated = re.search(r"drained jobs_terminated=(\d+)", server.log())
        assert terminated is not None and int(terminated.group(1)) >= 1
    finally:
        worker.kill()
        if server.process.poll() is None:
            stop_server(server)


def test_sigterm_with_nothing_running_exits_at_once(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", {"agents": {"drain_timeout": 60}})
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(timeout=EXIT_DEADLINE) == 0
    except Exception:
        stop_server(server)
        raise
    assert time.monotonic() - started < EXIT_DEADLINE
    assert "drained jobs_terminated=0" in server.log()


@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_ctrl_c_also_shuts_down_cleanly(tmp_path: Path, signum: int) -> None:
    server = start_server(tmp_path / "server")
    server.process.send_signal(signum)
    try:
        assert server.process.wait(timeout=EXIT_DEADLINE) == 0
    except Exception:
        stop_server(server)
        raise
