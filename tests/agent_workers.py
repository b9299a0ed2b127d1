"""Real livekit-agents worker processes (`tests/agents/worker.py`) for the integration tests, and a count
of their registrations read from the server's log (a process server has no other view)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Server
from tests.polling import eventually  # also imported from here by the tests that used its copy
from tests.protocol_worker import Endpoint

WORKER_SCRIPT = Path(__file__).resolve().parent / "agents" / "worker.py"


class AgentWorker:
    """One `python worker.py start` process, as a user runs an agent."""

    def __init__(
        self,
        server: Endpoint,
        directory: Path,
        agent_name: str,
        behaviour: str,
        secret: str = "",
        **settings: str,
    ) -> None:
        """`settings`: more of the worker program's TEST_* variables, by lower-case name without TEST_."""
        self.records = directory / "records"
        self.records.mkdir(parents=True)
        self.log_path = directory / "worker.log"
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        env.update(
            LIVEKIT_URL=server.ws_url,
            LIVEKIT_API_KEY=server.api_key,
            LIVEKIT_API_SECRET=secret or server.api_secret,
            TEST_AGENT_NAME=agent_name,
            TEST_BEHAVIOUR=behaviour,
            TEST_RECORD_DIR=str(self.records),
        )
        env.update({f"TEST_{name.upper()}": value for name, value in settings.items()})
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), "start"],
                cwd=WORKER_SCRIPT.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its job processes share the group, so kill() takes them all
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in self.records.glob("*.json")}

    def runs(self) -> dict[str, list[tuple[float, float | None]]]:
        """Every copy of every job that started here: (start, end or None while it runs), by job id."""
        found: dict[str, list[tuple[float, float | None]]] = {}
        for path in self.records.glob("*.run"):
            lines = [
                json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")
            ]
            if not lines:
                continue  # being written
            end = lines[1]["end"] if len(lines) > 1 else None
            found.setdefault(path.name.split(".")[0], []).append((lines[0]["start"], end))
        return found

    def refused(self) -> set[str]:
        """The jobs a `reject` worker was offered and refused."""
        return {p.stem for p in self.records.glob("*.refused")}

    def ended(self, job_id: str) -> bool:
        return (self.records / f"{job_id}.ended").exists()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def registrations(server: Server, agent_name: str) -> int:
    return len(
        re.findall(rf"worker registered worker=AW_\S+ agent_name='{re.escape(agent_name)}'", server.log())
    )


async def registered(server: Server, agent_name: str, count: int = 1) -> None:
    await eventually(lambda: registrations(server, agent_name) >= count, f"{count} '{agent_name}' worker(s)")
