"""The composition root: build the application from a Config, wire the pieces, run it."""

import asyncio
import logging

from aiohttp import web

from switchboard import __version__, logs
from switchboard.api import agent_dispatch_service, room_service
from switchboard.api.cors import cors_middleware
from switchboard.api.twirp import TwirpServer
from switchboard.auth.tokens import TokenVerifier
from switchboard.config import Config
from switchboard.core.engine import Engine, EngineSettings
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.server")

RUNTIME = web.AppKey("runtime", Runtime)


async def health(_: web.Request) -> web.Response:
    return web.Response(text="OK")


def build_app(config: Config) -> web.Application:
    engine = Engine(
        EngineSettings(
            limits=config.limits,
            empty_timeout=config.empty_timeout,
            departure_timeout=config.departure_timeout,
            max_participants=config.max_participants,
            pending_timeout=config.pending_timeout,
        )
    )
    runtime = Runtime(engine)
    app = web.Application(middlewares=[cors_middleware])
    app[RUNTIME] = runtime
    twirp = TwirpServer(TokenVerifier(config.keys), config.max_api_request_body_size, runtime.flush)
    twirp.add_service("RoomService", room_service.methods(runtime))
    twirp.add_service("AgentDispatchService", agent_dispatch_service.methods(runtime))
    twirp.install(app)
    app.router.add_get("/", health)

    async def start(app: web.Application) -> None:
        await app[RUNTIME].start()

    async def stop(app: web.Application) -> None:
        await app[RUNTIME].stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def serve(config: Config) -> None:
    logs.configure(config.log_level)
    for warning in config.warnings:
        log.warning("config %s", warning)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # uvloop is optional (e.g. on Windows)
        loop = asyncio.new_event_loop()
    addresses = ", ".join(f"{host}:{config.port}" for host in config.bind_addresses)
    mode = " (dev mode: API key 'devkey' with the built-in dev secret)" if config.development else ""
    log.info("switchboard %s listening on %s%s", __version__, addresses, mode)
    web.run_app(
        build_app(config),
        host=list(config.bind_addresses),
        port=config.port,
        print=None,
        access_log=None,
        loop=loop,
    )
