"""The in-process tier: the application built by `switchboard.server.build_app` inside the test process,
served on aiohttp's test server (a real socket on 127.0.0.1), so that tests can read the engine's state
(rooms, jobs, workers) and the worker hub's sessions directly instead of grepping a log.

Each test gets its own application, started in a few milliseconds, with the settings it needs."""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from switchboard.config import Config, load_config
from switchboard.core.engine import Engine
from switchboard.runtime import Runtime
from switchboard.server import HUB, RUNTIME, build_app
from switchboard.workers.hub import WorkerHub
from tests.conftest import API_KEY, API_SECRET
from tests.protocol_worker import Client


class ProductionTestServer(TestServer):
    """aiohttp's test server with the request handler the server runs in production: the test server
    turns on handler cancellation (a request's handler is cancelled when its client goes away), which
    `switchboard serve` leaves off."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False
        return web.AppRunner(self.app, **kwargs)


@dataclass
class AppServer:
    """One application, served in this process; `http_url`, `ws_url` and `token` as tests.conftest.Server."""

    test_server: TestServer
    config: Config

    @property
    def app(self) -> web.Application:
        return self.test_server.app

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def hub(self) -> WorkerHub:
        return self.app[HUB]

    @property
    def http_url(self) -> str:
        return str(self.test_server.make_url("")).rstrip("/")

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://")

    @property
    def api_key(self) -> str:
        return API_KEY

    @property
    def api_secret(self) -> str:
        return API_SECRET

    def token(self, ttl: float = 600, **grants: Any) -> str:
        return mint_token(API_KEY, API_SECRET, video=VideoGrant(**grants), ttl=ttl)

    def workers_named(self, agent_name: str) -> list[str]:
        """Ids of the workers the engine has registered for `agent_name`."""
        return [w.id for w in self.engine.workers.values() if w.spec.agent_name == agent_name]


StartApp = Callable[..., Awaitable[AppServer]]


@pytest.fixture
async def start_app() -> AsyncIterator[StartApp]:
    """`await start_app({"agents": {...}})`: an application built from these config-file settings (the same
    YAML keys and validation as `switchboard serve --config`), listening on a free port; closed after the
    test."""
    started: list[AppServer] = []

    async def start(settings: dict[str, Any] | None = None) -> AppServer:
        document = {"keys": {API_KEY: API_SECRET}, "bind_addresses": ["127.0.0.1"], **(settings or {})}
        config = load_config(env={"LIVEKIT_CONFIG": yaml.safe_dump(document)})
        test_server = ProductionTestServer(build_app(config), host="127.0.0.1")
        await test_server.start_server(access_log=None, **config.http.handler_options())
        server = AppServer(test_server, config)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as instance:
        yield instance


@pytest.fixture
def client_for(session: aiohttp.ClientSession) -> Callable[[AppServer], Client]:
    """A protocol-level worker and dispatch client (tests.protocol_worker.Client) for an application."""
    return lambda server: Client(server, session)
