"""The dashboard's page in a headless browser, driven by `tests/node/dashboard_scenario.mjs`: Chromium
through playwright-core, Debian's firefox-esr through puppeteer-core over WebDriver BiDi. Shared by the
dashboard tests and bench/dispatch.py's `dashboard` phase."""

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from tests.browser import NODE_DIR, PROXY_VARIABLES, SCENARIO_TIMEOUT, toolchain_or_fail

FIREFOX = "/usr/bin/firefox-esr"
PUPPETEER_DIR = NODE_DIR / "node_modules" / "puppeteer-core"


def browser_or_fail(browser: str) -> tuple[str, str]:
    """`node` and the executable of BROWSER (chromium or firefox); fail (never skip) when one is missing."""
    node, chromium = toolchain_or_fail()
    if browser == "chromium":
        return node, chromium
    if not PUPPETEER_DIR.exists():
        pytest.fail(f"{PUPPETEER_DIR} is missing: run `make test` (it runs `npm ci` in tests/node)")
    if not os.access(FIREFOX, os.X_OK):
        pytest.fail(
            "Firefox is not installed: `apt-get install -y firefox-esr` (`.ci/run` installs it when missing)"
        )
    return node, FIREFOX


class Site(Protocol):
    """The server whose dashboard is shown: its address, an API key and secret to log in with, and its
    log (told when the page met an unexpected error). A test's `Server` is one."""

    http_url: str
    api_key: str
    api_secret: str

    def log(self) -> str: ...


@contextlib.asynccontextmanager
async def dashboard_scenario(
    server: Site, name: str, settings: dict[str, str], browser: str = "chromium"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`dashboard_scenario.mjs NAME` in BROWSER, once the page logged in shows its first state."""
    node, executable = browser_or_fail(browser)
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES} | {
        "DASHBOARD_URL": f"{server.http_url}/dashboard",
        "API_KEY": server.api_key,
        "API_SECRET": server.api_secret,
        "BROWSER": browser,
        "BROWSER_EXECUTABLE": executable,
        **settings,
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "dashboard_scenario.mjs"),
        name,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        shown = await asyncio.wait_for(process.stdout.readline(), SCENARIO_TIMEOUT)
        assert shown == b"shown\n", shown.decode()
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def observations(server: Site, process: asyncio.subprocess.Process) -> dict[str, Any]:
    """The scenario's one JSON line, once it ended without an unexpected error."""
    stdout, stderr = await asyncio.wait_for(process.communicate(), SCENARIO_TIMEOUT)
    lines = stdout.decode().strip().splitlines()
    assert process.returncode == 0 and len(lines) == 1, stderr.decode()
    result: dict[str, Any] = json.loads(lines[0])
    assert "unexpectedError" not in result, f"{result}\n{server.log()}"
    return result
