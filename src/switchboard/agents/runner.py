"""Run one agent described by an `agent-NAME.yaml` as an unmodified livekit-agents worker.

`switchboard agent run` uses this for the built-in services; a user's own livekit-agents program uses
`agent_server()` and `run()` to get the same name, dispatch mode, load threshold and shutdown.
"""

import asyncio
import functools
import logging
import os
import signal

from livekit.agents import AgentServer

from switchboard.agents.config import AgentConfig
from switchboard.agents.services import check_services, run_services
from switchboard.agents.supervisor import DRAIN_LIMIT_ENV, SUPERVISOR_PID_ENV
from switchboard.agents.watchdog import Watchdog

log = logging.getLogger("switchboard.agents")

# livekit-agents lets these replace the agent name given in code; for an agent file, the file decides.
NAME_OVERRIDES = ("LIVEKIT_AGENT_NAME", "LIVEKIT_AGENT_NAME_OVERRIDE")
SECOND_SIGNAL_LIMIT = 5.0
"""After a second signal, how long the running jobs get to close before everything is killed."""


def agent_server(config: AgentConfig, **options: object) -> AgentServer:
    """An AgentServer set up from the config (`options` add to or override its settings).

    Register the entrypoint with `@server.rtc_session(agent_name=config.registration_name)`.
    """
    for variable in NAME_OVERRIDES:
        if os.environ.pop(variable, None) is not None:
            log.warning("%s ignored: %s decides the agent's name and dispatch", variable, config.source)
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
    server.rtc_session(functools.partial(run_services, config), agent_name=config.registration_name)
    return server


def run(server: AgentServer, config: AgentConfig) -> None:
    """Run the worker until SIGTERM or SIGINT, then drain: running jobs finish (or the server ends them);
    a second signal ends them at once. A config with `enabled: false` runs nothing and says so."""
    if _prepare(config):
        _start(config, server)


def run_builtin(config: AgentConfig) -> None:
    """`switchboard agent run`: the built-in services the config turns on, as one worker."""
    if _prepare(config):
        _start(config, builtin_agent(config))


def _prepare(config: AgentConfig) -> bool:
    """Set up logging and report the config's warnings; whether the agent is to run at all."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in config.warnings:
        log.warning("%s", warning)
    if not config.enabled:
        log.warning("%s: agent '%s' not started: enabled is false", config.source, config.name)
    return config.enabled


def _start(config: AgentConfig, server: AgentServer) -> None:
    mode = "automatic (every new room)" if config.automatic else f"explicit, as agent_name '{config.name}'"
    log.info("agent '%s' starting; dispatch %s", config.name, mode)
    asyncio.run(_serve(server))


def watchdog_from_env() -> Watchdog:
    """The bounds `serve --agents` sets for its agents (none for an agent run by hand)."""

    def number(name: str) -> float | None:
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            return None

    parent = number(SUPERVISOR_PID_ENV)
    return Watchdog(int(parent) if parent else None, number(DRAIN_LIMIT_ENV))


async def _serve(server: AgentServer) -> None:
    watchdog = watchdog_from_env()
    watchdog.start()
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    running = asyncio.create_task(server.run())
    signalled = asyncio.create_task(signals.get())
    await asyncio.wait((running, signalled), return_when=asyncio.FIRST_COMPLETED)
    if signalled.done():
        log.info("stopping: draining running jobs (a second signal ends them now)")
        watchdog.draining()
        draining = asyncio.create_task(server.drain())
        again = asyncio.create_task(signals.get())
        await asyncio.wait((draining, again), return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():
            log.warning("stopping now: running jobs are closed")
            watchdog.limit(SECOND_SIGNAL_LIMIT, f"the jobs did not close within {SECOND_SIGNAL_LIMIT:g}s")
            draining.cancel()
        elif not draining.cancelled() and (error := draining.exception()) is not None:
            log.warning("drain ended early (%r); running jobs are closed", error)
        again.cancel()
        await server.aclose()
    signalled.cancel()
    try:
        await running
    except RuntimeError as exc:  # run() ends so when the framework gives up (e.g. connecting, 16 tries)
        log.error("agent stopped: %s", exc)
        await server.aclose()
        raise SystemExit(1) from exc
