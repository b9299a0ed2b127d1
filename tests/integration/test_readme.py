"""The README's commands and programs, run as written against a server started as `make serve` starts it.

Marker convention: a fenced block of `sh` or `python` in README.md is run by this test when the line just
before its opening fence is an HTML comment starting with `<!-- runnable` (invisible once rendered):

    <!-- runnable -->
    ```sh
    .venv/bin/switchboard room create my-room --agent speech-processing
    ```

The blocks run in the order they appear, from the repository's root, each to completion: `sh` blocks with
`sh -e`, `python` blocks with this environment's interpreter. Mark only blocks that finish by themselves
(not `make serve` or an agent that runs until Ctrl-C). The one thing changed is the address: the server
here listens on a free port, so `127.0.0.1:7880` in a block becomes that port, and LIVEKIT_URL points the
CLI at it (the CLI's default is 127.0.0.1:7880).
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api

from tests.agent_workers import eventually
from tests.conftest import Server, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- runnable"
SNIPPET_DEADLINE = 60.0
AGENT_JOIN_DEADLINE = 90.0  # the sample agent imports livekit-agents and pocketsphinx before it registers


@dataclass(frozen=True)
class Snippet:
    language: str
    code: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def runnable_snippets(text: str) -> list[Snippet]:
    lines = text.splitlines()
    snippets = []
    for index, line in enumerate(lines):
        if not line.startswith(MARKER):
            continue
        fence = re.fullmatch(r"```(\w+)", lines[index + 1])
        assert fence and fence.group(1) in ("sh", "python"), (
            f"README.md:{index + 1}: {MARKER} before a non-block"
        )
        end = lines.index("```", index + 2)
        snippets.append(Snippet(fence.group(1), "\n".join(lines[index + 2 : end]) + "\n", index + 3))
    return snippets


def test_the_readme_marks_its_quick_start_runnable() -> None:
    snippets = runnable_snippets(README.read_text())
    languages = [s.language for s in snippets]
    assert languages.count("sh") >= 2 and languages.count("python") >= 2
    quick_start = snippets[0].code
    assert "--agent speech-processing" in quick_start, "the first dispatch is the agent `make serve` runs"
    for snippet in snippets:
        if snippet.language == "python":
            assert "asyncio.run(" in snippet.code or "await" not in snippet.code, (
                f"{snippet}: a whole program"
            )


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`switchboard serve --dev --agents agents`, as `make serve` runs it, on a free port."""
    instance = start_server(
        tmp_path_factory.mktemp("server"),
        # No keys: --dev's devkey / secret. A short drain: the sample agent's job still runs at the end.
        {"keys": None, "agents_dir": str(ROOT / "agents"), "agents": {"drain_timeout": 1}},
        "--dev",
    )
    yield instance
    stop_server(instance)


def run_snippet(snippet: Snippet, server: Server) -> subprocess.CompletedProcess[str]:
    address = server.http_url.removeprefix("http://")
    code = snippet.code.replace("127.0.0.1:7880", address)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "AGENT_CONFIG"))}
    env["LIVEKIT_URL"] = server.http_url
    command = ["sh", "-e", "-c", code] if snippet.language == "sh" else [sys.executable, "-c", code]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SNIPPET_DEADLINE
    )


async def test_the_readme_runs_as_written(dev_server: Server) -> None:
    for snippet in runnable_snippets(README.read_text()):
        result = run_snippet(snippet, dev_server)
        assert result.returncode == 0, f"{snippet} failed:\n{snippet.code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, f"{snippet}:\n{result.stderr}"

    # The Quick start's dispatch is served: the sample agent that `make serve` runs joins my-room.
    async with api.LiveKitAPI(dev_server.http_url, "devkey", "secret") as lkapi:

        async def agent_running() -> bool:
            dispatches = await lkapi.agent_dispatch.list_dispatch("my-room")
            jobs = [j for d in dispatches if d.agent_name == "speech-processing" for j in d.state.jobs]
            return any(j.state.status == api.JobStatus.JS_RUNNING for j in jobs)

        await eventually(agent_running, "the sample agent running in my-room", AGENT_JOIN_DEADLINE)
