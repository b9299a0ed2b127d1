"""Running the official Node clients (`tests/node`) from Python tests."""

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "twirp_scenarios.mjs"
SDK_DIR = NODE_DIR / "node_modules" / "livekit-server-sdk"
NODE_TIMEOUT = 60.0
PROXY_VARIABLES = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}


def node_or_fail() -> str:
    """The `node` executable; fail (never skip) when the Node toolchain or the SDK is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "`node` is not on PATH: install Node.js 20+ and run `make test` to set up the Node clients"
        )
    if not SDK_DIR.is_dir():
        pytest.fail(f"{SDK_DIR} is missing: run `make test` (it runs `npm ci` in tests/node)")
    return node


@dataclass
class NodeRun:
    """What one Node scenario process did: its exit status, the JSON result objects it printed (lines
    with a "scenario" key), and everything else (the SDKs' loggers also write to stdout)."""

    returncode: int
    results: list[dict[str, Any]]
    other_output: list[str]
    stderr: str
    held_error: BaseException | None = None
    """What `while_running` raised, if anything (the scenario is released all the same)."""


async def run_node(
    script: Path,
    scenario: str,
    env: dict[str, str],
    context: Callable[[], str],
    while_running: Callable[[], Awaitable[None]] | None = None,
) -> NodeRun:
    """Run `node script scenario` with `env` (the proxy variables removed) within NODE_TIMEOUT.

    With `while_running`, the scenario is expected to wait for a line on stdin: it gets `go` once that
    coroutine has finished. `context()` is added to a timeout failure (e.g. the server log).
    """
    node = node_or_fail()
    env = {key: value for key, value in env.items() if key not in PROXY_VARIABLES}
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        scenario,
        cwd=NODE_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    held_error: BaseException | None = None
    try:
        if while_running is not None:
            try:
                await while_running()
            except Exception as exc:  # reported by the caller, with what the scenario saw
                held_error = exc
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it ended: its output says why
                process.stdin.write(b"go\n")
                await process.stdin.drain()
        stdout, stderr = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node scenario {scenario!r} did not finish within {NODE_TIMEOUT:g}s\n{context()}")
    results, other = [], []
    for line in stdout.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and "scenario" in parsed:
                results.append(parsed)
                continue
        if line.strip():
            other.append(line)
    assert process.returncode is not None
    return NodeRun(process.returncode, results, other, stderr.decode(errors="replace"), held_error)


async def run_scenario(server: Server, scenario: str, **scenario_env: str) -> dict[str, Any]:
    """Run one server-SDK scenario and return the JSON object it printed."""
    env = dict(os.environ)
    env.update(
        SWITCHBOARD_URL=server.http_url, LIVEKIT_API_KEY=server.api_key, LIVEKIT_API_SECRET=server.api_secret
    )
    env.update(scenario_env)
    run = await run_node(SCRIPT, scenario, env, server.log)
    if run.returncode != 0 or len(run.results) != 1 or run.other_output:
        pytest.fail(
            f"node scenario {scenario!r} exited with {run.returncode} and printed {len(run.results)} results:"
            f"\n{run.stderr}\n{chr(10).join(run.other_output)}"
        )
    [result] = run.results
    if "unexpectedError" in result:
        pytest.fail(
            f"the SDK raised during {scenario!r}: {json.dumps(result['unexpectedError'])}\n"
            f"{result.get('stack')}\n--- server log ---\n{server.log()}"
        )
    assert result["scenario"] == scenario
    return result
