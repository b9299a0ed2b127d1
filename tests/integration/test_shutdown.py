"""SIGTERM: the server stops taking work, ends at once the jobs of rooms nobody is in, lets the others go
on for the grace period, then ends them; a second signal ends everything at once; and no agent or job
process outlives the server, however it ended (process table read from /proc)."""

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from livekit import api, rtc

from tests.agent_workers import AgentWorker, eventually, registered
from tests.conftest import Server, start_server, stop_server
from tests.e2e.captions import captions_agent, started_pids

EXIT_DEADLINE = 20.0
ORPHAN_DEADLINE = 8.0


async def test_sigterm_drains_running_jobs_then_terminates_them(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", {"agents": {"drain_timeout": 3}})
    worker = AgentWorker(server, tmp_path / "worker", "drainer", "hang")
    alice = rtc.Room()  # someone is in the room: its job drains (in an empty room it would end at once)
    try:
        await alice.connect(server.ws_url, server.join_token("drain-room", "alice"))
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
        await alice.disconnect()
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


# With agents run by the server (`serve --agents`): the captions agent, a real livekit-agents worker.


def serve_captions(directory: Path, drain_timeout: float) -> Server:
    agents = directory / "agents"
    agents.mkdir(parents=True)
    (agents / "agent-captions.yaml").write_text(captions_agent("manual"))
    settings = {"agents_dir": str(agents), "agents": {"drain_timeout": drain_timeout}}
    return start_server(directory / "server", settings)


async def dispatch_and_wait_for_the_agent(lkapi: api.LiveKitAPI, room: str) -> None:
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="captions", room=room)
    )

    async def agent_joined() -> bool:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return any(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants)

    await eventually(agent_joined, f"the agent to join {room}")


def job_ended_line(server: Server, room: str) -> str:
    found = re.search(rf"job ended job=\S+ dispatch=\S+ room={room} status=\w+ error=.*", server.log())
    return found.group(0) if found else ""


def process_table() -> dict[tuple[int, str], tuple[int, int]]:
    """Every running process as (pid, start time: a reused pid is another) → (parent pid, process group),
    read from /proc."""
    table: dict[tuple[int, str], tuple[int, int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if fields[0] != "Z":  # a zombie has ended
            table[(int(entry.name), fields[19])] = (int(fields[1]), int(fields[2]))
    return table


def agent_processes(server: Server) -> set[tuple[int, str]]:
    """Every process the server started, directly or not (the agent, its job processes), and every
    process of the agent's process group."""
    table = process_table()
    [agent] = started_pids(server, "captions")
    found = {process for process, (_, group) in table.items() if group == agent}
    parents = {server.process.pid}
    while True:
        below = {process for process, (parent, _) in table.items() if parent in parents} - found
        if not below:
            return found
        found |= below
        parents = {pid for pid, _ in below}


async def gone(processes: set[tuple[int, str]], what: str, deadline: float = EXIT_DEADLINE) -> None:
    def none_left() -> bool:
        return not processes & process_table().keys()

    await eventually(none_left, what, deadline)


async def test_first_signal_ends_jobs_of_empty_rooms_at_once_and_drains_the_others(tmp_path: Path) -> None:
    drain = 4.0
    server = serve_captions(tmp_path, drain)
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            await registered(server, "captions")
            alice = rtc.Room()
            await alice.connect(server.ws_url, server.join_token("attended", "alice"))
            await dispatch_and_wait_for_the_agent(lkapi, "attended")
            await dispatch_and_wait_for_the_agent(lkapi, "empty")
            agents = agent_processes(server)

            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await eventually(lambda: job_ended_line(server, "empty"), "the empty room's job to end")
            ended_after = time.monotonic() - signalled
            assert ended_after < drain, "nobody waits for it: it does not wait for the drain"
            assert "no participant is left in the room" in job_ended_line(server, "empty")
            assert not job_ended_line(server, "attended"), "alice is still served while the server drains"

            assert await asyncio.to_thread(server.process.wait, drain + EXIT_DEADLINE) == 0
            exited_after = time.monotonic() - signalled
            await alice.disconnect()
        assert "error='terminated: server shut down'" in job_ended_line(server, "attended")
        assert exited_after >= drain
        await gone(agents, "the agent and its job processes to exit")
        print(f"empty room's job ended after {ended_after:.2f}s, server exited after {exited_after:.2f}s")
    finally:
        if server.process.poll() is None:
            os.killpg(started_pids(server, "captions")[0], signal.SIGKILL)
            stop_server(server)


async def alice_with_the_agent(
    server: Server, lkapi: api.LiveKitAPI
) -> tuple[rtc.Room, set[tuple[int, str]]]:
    """Alice in room "attended" with the captions agent dispatched to it: her room and the agent's
    processes (its worker and its job process at least)."""
    await registered(server, "captions")
    alice = rtc.Room()
    await alice.connect(server.ws_url, server.join_token("attended", "alice"))
    await dispatch_and_wait_for_the_agent(lkapi, "attended")
    agents = agent_processes(server)
    assert len(agents) >= 2, "the agent and its job process"
    return alice, agents


async def test_a_second_signal_stops_server_and_agents_at_once(tmp_path: Path) -> None:
    server = serve_captions(tmp_path, 60)
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            alice, agents = await alice_with_the_agent(server, lkapi)

            server.process.send_signal(signal.SIGINT)
            await eventually(lambda: "draining jobs=1" in server.log(), "the drain to begin")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(server.process.wait, EXIT_DEADLINE) == 0
            exited_after = time.monotonic() - signalled
            await alice.disconnect()
        assert "second signal: stopping now" in server.log()
        assert "error='terminated: server shut down'" in job_ended_line(server, "attended")
        await gone(agents, "the agent and its job processes to be killed")
        print(f"server exited {exited_after:.2f}s after the second signal")
    finally:
        if server.process.poll() is None:
            server.process.kill()


async def test_no_agent_or_job_process_outlives_a_server_killed_with_sigkill(tmp_path: Path) -> None:
    server = serve_captions(tmp_path, 60)
    try:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
            alice, agents = await alice_with_the_agent(server, lkapi)
            table = process_table()
            groups = {table[process][1] for process in agents if process in table}
            print(f"{len(agents)} agent processes in process groups {groups}")

            killed = time.monotonic()
            server.process.kill()
            server.process.wait()
            # Their own watchdog sees the server gone within a fraction of a second; without it, they would
            # drain until their rooms' connections time out (about 17 s here).
            await gone(agents, "the agent and its job processes to end with the server", ORPHAN_DEADLINE)
            print(f"agent and job processes gone {time.monotonic() - killed:.2f}s after the server's SIGKILL")
            await alice.disconnect()
    finally:
        if server.process.poll() is None:
            server.process.kill()
