"""The official browser SDK `livekit-client` (unmodified) in headless Debian Chromium, driven by
`tests/node/browser_scenario.mjs` (playwright-core), which prints what the page observed as one JSON line.

The page comes from a small HTTP server in the test process that serves only the SDK's UMD build, so the
browser talks to Switchboard cross-origin, as a web app does.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Server

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "browser_scenario.mjs"
CLIENT_DIST = NODE_DIR / "node_modules" / "livekit-client" / "dist"
CLIENT_UMD = CLIENT_DIST / "livekit-client.umd.js"
E2EE_WORKER = CLIENT_DIST / "livekit-client.e2ee.worker.js"  # the SDK's end-to-end encryption worker
PLAYWRIGHT_DIR = NODE_DIR / "node_modules" / "playwright-core"
# Failure bounds, not expected durations (a run takes 3-6 s, up to ~15 s on a loaded 2-core machine).
SCENARIO_TIMEOUT = 60.0
JOIN_TIMEOUT = 30.0  # node + Chromium start, page load, connect, publish
STEP_TIMEOUT = 15.0
PROXY_VARIABLES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>switchboard browser test</title>
<script src="/livekit-client.umd.js"></script></head>
<body>livekit-client in a browser</body></html>
"""


def toolchain_or_fail() -> tuple[str, str]:
    """`node` and the Chromium executable; fail (never skip) when something is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: install Node.js 20+ (`.ci/run` does, with apt)")
    for needed in (CLIENT_UMD, E2EE_WORKER, PLAYWRIGHT_DIR):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `make test` (it runs `npm ci` in tests/node)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        pytest.fail(
            "Chromium is not installed: `apt-get install -y chromium` (Debian's package, /usr/bin/chromium; "
            "`.ci/run` installs it when missing)"
        )
    return node, chromium


@contextlib.asynccontextmanager
async def served_page() -> AsyncIterator[str]:
    """A page on 127.0.0.1 (a secure context, so WebAudio, WebRTC and E2EE work) loading the SDK's UMD
    build; the SDK's e2ee worker is served beside it (workers must come from the page's origin)."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    def script(path: Path) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
        async def serve(_: web.Request) -> web.FileResponse:
            return web.FileResponse(path, headers={"Content-Type": "text/javascript"})

        return serve

    app = web.Application()
    app.router.add_get("/", index)
    for path in (CLIENT_UMD, E2EE_WORKER):
        app.router.add_get(f"/{path.name}", script(path))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


class BrowserScenario:
    """One run of browser_scenario.mjs: start it, optionally tell it to leave, collect its JSON line."""

    def __init__(self, server: Server, page: str, scenario: str, token: str, **env: str) -> None:
        self.server = server
        self.page = page
        self.scenario = scenario
        self.token = token
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> None:
        node, chromium = toolchain_or_fail()
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env.update(
            PAGE_URL=self.page,
            SWITCHBOARD_WS_URL=self.server.ws_url,
            SWITCHBOARD_HTTP_URL=self.server.http_url,
            BROWSER_TOKEN=self.token,
            CHROMIUM=chromium,
            **self.env,
        )
        self.started = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            self.scenario,
            cwd=NODE_DIR,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Chromium's processes share its group, so kill() ends them all
        )

    def tell(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def result(self) -> dict[str, Any]:
        assert self.process is not None
        remaining = SCENARIO_TIMEOUT - (time.monotonic() - self.started)
        try:
            stdout, stderr = await asyncio.wait_for(self.process.communicate(), max(remaining, 1.0))
        except TimeoutError:
            await self.kill()
            pytest.fail(
                f"browser scenario {self.scenario!r} did not finish within {SCENARIO_TIMEOUT:g}s\n"
                f"--- server log ---\n{self.server.log()}"
            )
        output, errors = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        lines = output.strip().splitlines()
        if self.process.returncode != 0 or len(lines) != 1:
            pytest.fail(
                f"browser scenario {self.scenario!r} exited with {self.process.returncode} and printed "
                f"{len(lines)} lines, not one JSON object:\n{errors}\n{output}"
            )
        result: dict[str, Any] = json.loads(lines[0])
        if "unexpectedError" in result:
            pytest.fail(
                f"the browser raised during {self.scenario!r}: {result['unexpectedError']}\n"
                f"{result.get('stack')}\n"
                f"console: {json.dumps(result.get('consoleErrors'), indent=1)}\n"
                f"--- server log ---\n{self.server.log()}"
            )
        assert result["scenario"] == self.scenario
        return result

    async def wait_for(self, event: asyncio.Event, what: str, seconds: float = STEP_TIMEOUT) -> None:
        """Wait for something the Python side observes; on a timeout, fail with both sides' logs."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        if not event.is_set():
            await self.kill()
            browser_log = ""
            if self.process is not None and self.process.stderr is not None:
                browser_log = (await self.process.stderr.read()).decode(errors="replace")
            pytest.fail(
                f"timed out after {seconds:g}s waiting for {what}\n--- browser (stderr) ---\n{browser_log}\n"
                f"--- server log ---\n{self.server.log()}"
            )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
