"""Run one agent described by an `agent-NAME.yaml` as an unmodified livekit-agents worker.

`switchboard agent run` uses this for the built-in services; a user's own livekit-agents program uses
`agent_server()` and `run()` to get the same name, dispatch mode, load threshold and shutdown.
"""

import asyncio
import functools
import logging
import signal

from livekit.agents import AgentServer, JobContext

from switchboard.agents.config import AgentConfig
from switchboard.agents.services import check_services, run_services

log = logging.getLogger("switchboard.agents")

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}


def agent_server(config: AgentConfig, **options: object) -> AgentServer:
    """An AgentServer set up from the config (`options` add to or override its settings).

    Register the entrypoint with `@server.rtc_session(agent_name=config.registration_name)`.
    """
    # The worker's own health endpoint: loopback on a free port, so that several agents fit on one host.
    settings: dict[str, object] = {"host": "127.0.0.1", "port": 0} | config.server_options() | options
    return AgentServer(**settings)  # type: ignore[arg-type]


def builtin_agent(config: AgentConfig) -> AgentServer:
    """The worker for the built-in services the config turns on (checked here, before any job)."""
    check_services(config)
    for service in config.services.values():
        if not service.builtin:
            log.warning("%s: %s is not a built-in service; it is left out here", config.source, service.name)
    server = agent_server(config)
    # A partial of a module-level function: the framework pickles the entrypoint into its job processes.
    server.rtc_session(functools.partial(_entrypoint, config), agent_name=config.registration_name)
    return server


async def _entrypoint(config: AgentConfig, ctx: JobContext) -> None:
    await run_services(ctx, config)


def run(server: AgentServer, config: AgentConfig) -> None:
    """Run the worker until SIGTERM or SIGINT, then drain: running jobs finish (or the server ends them).
    A config with `enabled: false` runs nothing and says so."""
    if _announce(config):
        asyncio.run(_serve(server))


def run_builtin(config: AgentConfig) -> None:
    """`switchboard agent run`: the built-in services the config turns on, as one worker."""
    if _announce(config):
        asyncio.run(_serve(builtin_agent(config)))


def _announce(config: AgentConfig) -> bool:
    configure_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    if not config.enabled:
        log.warning("%s: agent '%s' not started: enabled is false", config.source, config.name)
        return False
    mode = "automatic (every new room)" if config.automatic else f"explicit, as agent_name '{config.name}'"
    log.info("agent '%s' starting; dispatch %s", config.name, mode)
    return True


async def _serve(server: AgentServer) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    running = asyncio.create_task(server.run())
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait((running, stop), return_when=asyncio.FIRST_COMPLETED)
    if stopping.is_set():
        log.info("stopping: draining running jobs")
        try:
            await server.drain()
        except TimeoutError:
            log.warning("drain timed out; closing running jobs")
        await server.aclose()
    stop.cancel()
    try:
        await running
    except RuntimeError as exc:  # the framework gave up connecting (16 attempts, about 2 minutes)
        log.error("agent stopped: %s", exc)
        await server.aclose()
        raise SystemExit(1) from exc


def configure_logging(config: AgentConfig) -> None:
    level = LOG_LEVELS.get(config.log_level, logging.getLevelName(config.log_level.upper()))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
