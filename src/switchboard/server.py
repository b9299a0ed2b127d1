"""The composition root: build the application from a Config, wire the pieces, run it."""

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web
from livekit.protocol import models

from switchboard import LIVEKIT_COMPATIBLE_VERSION, LIVEKIT_PROTOCOL, __version__, logs
from switchboard.agents.supervisor import AgentSupervisor
from switchboard.api import agent_dispatch_service, room_service
from switchboard.api.cors import cors_middleware
from switchboard.api.twirp import TwirpServer
from switchboard.auth.tokens import TokenVerifier
from switchboard.config import DEV_KEYS, Config
from switchboard.core import ids
from switchboard.core.engine import Engine
from switchboard.rtc.service import RtcService
from switchboard.runtime import Runtime
from switchboard.workers.hub import WorkerHub

log = logging.getLogger("switchboard.server")

RUNTIME = web.AppKey("runtime", Runtime)
HUB = web.AppKey("hub", WorkerHub)
DRAIN_POLL_INTERVAL = 0.1


async def health(_: web.Request) -> web.Response:
    # The body stays LiveKit's "OK" (health checks compare it); the header says what really answers.
    return web.Response(text="OK", headers={"Server": f"switchboard/{__version__}"})


def build_app(config: Config) -> web.Application:
    runtime = Runtime(Engine(config.engine))
    verifier = TokenVerifier(config.keys)
    app = web.Application(middlewares=[cors_middleware])
    app[RUNTIME] = runtime
    server_info = models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=LIVEKIT_COMPATIBLE_VERSION,
        protocol=LIVEKIT_PROTOCOL,
        debug_info=f"switchboard {__version__}",
        agent_protocol=1,
        node_id=ids.new_id("ND_"),
    )
    hub = app[HUB] = WorkerHub(runtime, verifier, config.keys, config.workers, server_info)
    app.router.add_get("/agent", hub.handle)
    rtc = RtcService(runtime, verifier, config.rtc, server_info)
    rtc.install(app)
    twirp = TwirpServer(verifier, config.http, runtime.flush)
    twirp.add_service("RoomService", room_service.methods(runtime, live=rtc))
    twirp.add_service("AgentDispatchService", agent_dispatch_service.methods(runtime))
    twirp.install(app)
    app.router.add_get("/", health)

    async def start(app: web.Application) -> None:
        await app[RUNTIME].start()

    async def stop(app: web.Application) -> None:
        await app[RUNTIME].stop()

    async def close_workers(app: web.Application) -> None:
        await app[HUB].close_all()

    app.on_startup.append(start)
    app.on_shutdown.append(close_workers)
    app.on_cleanup.append(stop)
    return app


async def drain(runtime: Runtime, grace: float) -> None:
    """Take no new work, let running jobs finish for up to `grace` seconds, then terminate the rest."""
    runtime.engine.drain()
    busy = runtime.engine.busy_jobs()
    log.info("draining jobs=%d grace=%gs", busy, grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Polling: jobs end through many paths (worker reports, crashes, deadlines); a tenth of a second is cheap.
    while runtime.engine.busy_jobs() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL_INTERVAL)
    remaining = runtime.engine.busy_jobs()
    runtime.engine.shut_down(runtime.now())
    runtime.flush()
    log.info("drained jobs_terminated=%d", remaining)


class ListenError(Exception):
    """The server cannot listen where it was told to; the message says why, in one line."""


async def listen(runner: web.AppRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (
                f"port {port} is in use on {host}: another server (a second `make serve`?) listens there; "
                "stop it, or choose another --port"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            problem = f"cannot listen on {host}:{port}: {host} is not an address of this machine"
        elif exc.errno == errno.EACCES:
            problem = f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges)"
        else:
            problem = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ListenError(problem) from None


async def run(config: Config) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **config.http.handler_options())
    await runner.setup()
    try:
        for host in config.bind_addresses:
            await listen(runner, host, config.port)
    except ListenError:
        await runner.cleanup()
        raise
    mode = ""
    if config.development:
        dev_keys = dict(config.keys) == DEV_KEYS
        mode = " (dev mode: API key 'devkey' with the built-in dev secret)" if dev_keys else " (dev mode)"
    addresses = ", ".join(f"{host}:{config.port}" for host in config.bind_addresses)
    log.info(
        "switchboard %s (LiveKit %s compatible) listening on %s%s",
        __version__,
        LIVEKIT_COMPATIBLE_VERSION,
        addresses,
        mode,
    )
    supervisor = AgentSupervisor(config.agents, agent_environment(config))
    if config.agents.directory:
        supervisor.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutdown requested")
    supervisor.stop()  # the agents drain too: they take no new job and finish (or are told to end) theirs
    await drain(app[RUNTIME], config.drain_timeout)
    await asyncio.sleep(DRAIN_POLL_INTERVAL)  # let the terminations reach the workers
    await supervisor.wait()
    await runner.cleanup()


def agent_environment(config: Config) -> dict[str, str]:
    """What supervised agents need to reach this server: its URL and its first API key."""
    host = config.bind_addresses[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    key, secret = next(iter(config.keys.items()))
    return dict(os.environ) | {
        "LIVEKIT_URL": f"ws://{host}:{config.port}",
        "LIVEKIT_API_KEY": key,
        "LIVEKIT_API_SECRET": secret,
    }


def serve(config: Config) -> None:
    logs.configure(config.log_level)
    for warning in config.warnings:
        log.warning("config %s", warning)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):  # uvloop is optional (e.g. on Windows)
        import uvloop

        loop_factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(config))
