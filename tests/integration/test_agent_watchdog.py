"""The agent watchdog with real processes: an agent whose drain hangs (its event loop never yields again),
or whose server is gone, is killed with its job processes, which ignore SIGTERM."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DEADLINE = 10.0
POLL = 0.05

# A job process as livekit-agents leaves them: it ignores SIGTERM and would run forever.
JOB = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"

AGENT = textwrap.dedent(
    f"""
    import subprocess, sys
    from switchboard.agents.watchdog import Watchdog
    job = subprocess.Popen([sys.executable, "-c", {JOB!r}])
    watchdog = Watchdog(int(sys.argv[1]) or None, float(sys.argv[2]) if sys.argv[2] else None)
    watchdog.start()
    if sys.argv[2]:
        watchdog.draining()
    print(job.pid, flush=True)
    while True:  # a drain that never yields: no event loop timer or signal handler would ever run
        pass
    """
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: list[int], what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE:
        if not any(alive(pid) for pid in pids):
            return time.monotonic() - started
        time.sleep(POLL)
    pytest.fail(f"timed out waiting for {what}")


def test_a_hung_drain_is_killed_after_its_bound_with_its_job_processes() -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, "0", "0.5"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert agent.stdout is not None
        job = int(agent.stdout.readline())
        assert agent.wait(timeout=DEADLINE) == -signal.SIGKILL
        took = wait_until_gone([job], "the job process to be killed")
        print(f"job process gone {took:.2f}s after the agent")
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        agent.stdout.close()  # type: ignore[union-attr]


def test_an_agent_whose_server_is_gone_kills_itself_and_its_job_processes() -> None:
    # The "server" starts the agent in a process group of its own, as the supervisor does, then is killed
    # with SIGKILL: no handler of its own runs, and the agent gets no signal at all.
    server_code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        agent = subprocess.Popen([sys.executable, "-c", {AGENT!r}, str(os.getpid()), ""],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
        print(agent.pid, agent.stdout.readline().strip(), flush=True)
        time.sleep(600)
        """
    )
    server = subprocess.Popen([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    agent, job = (int(pid) for pid in server.stdout.readline().split())
    try:
        assert alive(agent) and alive(job)
        server.kill()
        server.wait()
        took = wait_until_gone([agent, job], "the agent and its job process to end with the server")
        print(f"agent and job process gone {took:.2f}s after the server's SIGKILL")
    finally:
        server.stdout.close()
        for pid in (agent, job):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
