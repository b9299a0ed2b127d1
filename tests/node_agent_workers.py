"""Real `@livekit/agents` Node workers (`tests/node_agents/worker.mjs`) as processes, for pytest.

The Node counterpart of `tests/agent_workers.py`: `node worker.mjs start`, as a user runs a Node agent.
Each job the worker runs appends JSON lines to one file (events `start`, `connected`, `disconnected`,
`end`, each with `job_id`, `pid`, `room` and `t` in ms), so a test can count how many times a job joined.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, free_port

NODE_AGENTS_DIR = Path(__file__).resolve().parent / "node_agents"
WORKER_SCRIPT = NODE_AGENTS_DIR / "worker.mjs"
FRAMEWORK_DIR = NODE_AGENTS_DIR / "node_modules" / "@livekit" / "agents"
PROXY_VARIABLES = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
JOB_TYPES = ("room", "participant", "publisher")
BEHAVIOURS = ("stay", "shutdown", "crash", "exit", "idle")


def node_or_fail() -> str:
    """The `node` executable; fail (never skip) when Node or the agents framework is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: install Node.js 20+ and run `make test`")
    if not FRAMEWORK_DIR.is_dir():
        pytest.fail(f"{FRAMEWORK_DIR} is missing: run `make test` (it runs `npm ci` in tests/node_agents)")
    return node


class NodeAgentWorker:
    """One `node worker.mjs start` process and the jobs it recorded."""

    def __init__(
        self,
        server: Server,
        directory: Path,
        agent_name: str = "",
        behaviour: str = "stay",
        job_type: str = "room",
        shutdown_after: float = 0.0,
        rooms_prefix: str = "",
    ) -> None:
        assert behaviour in BEHAVIOURS and job_type in JOB_TYPES, (behaviour, job_type)
        node = node_or_fail()
        directory.mkdir(parents=True)
        self.agent_name = agent_name
        self.jobs_file = directory / "jobs.jsonl"
        self.jobs_file.touch()
        self.log_path = directory / "worker.log"
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env.update(
            LIVEKIT_URL=server.ws_url,
            LIVEKIT_API_KEY=server.api_key,
            LIVEKIT_API_SECRET=server.api_secret,
            TEST_AGENT_NAME=agent_name,
            TEST_BEHAVIOUR=behaviour,
            TEST_JOB_TYPE=job_type,
            TEST_SHUTDOWN_AFTER=str(shutdown_after),
            TEST_JOBS_FILE=str(self.jobs_file),
            TEST_ROOMS_PREFIX=rooms_prefix,
            # `start` binds the health server to 8081 unless told otherwise: one port per worker.
            TEST_HEALTH_PORT=str(free_port()),
        )
        env.pop("LIVEKIT_AGENT_NAME", None)
        env.pop("LIVEKIT_AGENT_NAME_OVERRIDE", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [node, str(WORKER_SCRIPT), "start", "--log-level", "debug"],
                cwd=NODE_AGENTS_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its job and inference processes share the group: kill() takes all
            )

    def events(self, event: str = "", job_id: str = "") -> list[dict[str, Any]]:
        """The recorded events, oldest first; only `event` / `job_id` ones when given."""
        found = []
        for line in self.jobs_file.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line still being written
            record = json.loads(line)
            if (not event or record["event"] == event) and (not job_id or record["job_id"] == job_id):
                found.append(record)
        return found

    def jobs(self) -> dict[str, dict[str, Any]]:
        """job id → what its first start received (room, dispatch, metadata, token claims…)."""
        jobs: dict[str, dict[str, Any]] = {}
        for record in self.events("start"):
            jobs.setdefault(record["job_id"], record)
        return jobs

    def joins(self, job_id: str) -> int:
        """How many times this job's agent joined the room (`ctx.connect()` returned)."""
        return len(self.events("connected", job_id))

    def ended(self, job_id: str) -> bool:
        """Whether every run of this job has shut down (its shutdown callback ran)."""
        runs = len(self.events("start", job_id))
        return runs > 0 and len(self.events("end", job_id)) >= runs

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Signal the worker process only (the framework's own handlers drain and exit)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the worker and all its processes, as a crashed machine would."""
        # Also when the worker exited on its own: its job processes may linger until they see it gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class NodeAgentWorkers:
    """The Node workers one test started; a fixture yields `start` and calls `kill_all` after the test."""

    def __init__(self, server: Server, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.started: list[NodeAgentWorker] = []

    def start(
        self,
        agent_name: str = "",
        behaviour: str = "stay",
        job_type: str = "room",
        shutdown_after: float = 0.0,
        rooms_prefix: str = "",
    ) -> NodeAgentWorker:
        worker = NodeAgentWorker(
            self.server,
            self.directory / f"node-worker{len(self.started)}",
            agent_name,
            behaviour,
            job_type,
            shutdown_after,
            rooms_prefix,
        )
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()


def node_agent_workers(server: Server, directory: Path) -> Iterator[NodeAgentWorkers]:
    """Body of a fixture: `yield from node_agent_workers(server, tmp_path)`."""
    workers = NodeAgentWorkers(server, directory)
    print(f"Node workers' logs and job records: {directory}/node-worker*/")  # shown when a test fails
    try:
        yield workers
    finally:
        workers.kill_all()
