"""Running the official Node clients (`tests/node`) from Python tests."""

import asyncio
import json
import os
import shutil
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


async def run_scenario(server: Server, scenario: str, **scenario_env: str) -> dict[str, Any]:
    """Run one scenario with the SDK and return the JSON object it printed."""
    node = node_or_fail()
    env = {key: value for key, value in os.environ.items() if key not in PROXY_VARIABLES}
    env.update(
        SWITCHBOARD_URL=server.http_url, LIVEKIT_API_KEY=server.api_key, LIVEKIT_API_SECRET=server.api_secret
    )
    env.update(scenario_env)
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        scenario,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node scenario {scenario!r} did not finish within {NODE_TIMEOUT:g}s\n{server.log()}")
    output = stdout.decode(errors="replace")
    errors = stderr.decode(errors="replace")
    if process.returncode != 0:
        pytest.fail(f"node scenario {scenario!r} exited with {process.returncode}:\n{errors}\n{output}")
    lines = output.strip().splitlines()
    if len(lines) != 1:
        pytest.fail(f"node scenario {scenario!r} printed {len(lines)} lines, not one JSON object:\n{output}")
    result: dict[str, Any] = json.loads(lines[0])
    if "unexpectedError" in result:
        pytest.fail(
            f"the SDK raised during {scenario!r}: {json.dumps(result['unexpectedError'])}\n"
            f"{result.get('stack')}\n--- server log ---\n{server.log()}"
        )
    assert result["scenario"] == scenario
    return result
