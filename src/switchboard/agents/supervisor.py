"""`switchboard serve --agents DIR`: each enabled `agent-*.yaml` in DIR runs next to the server as a child
process (`switchboard agent run FILE`), restarted with backoff when it dies, stopped with the server.

This is how OpenVidu deploys agents beside the server, without containers. Children get the server's URL
and first API key in LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET (a file's own `ws_url`, `api_key`,
`api_secret` still win), and every line they print is copied to the server's stderr as `NAME | line`.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from switchboard.agents.config import AgentConfig, AgentConfigError, agent_config_files, load_agent_config

log = logging.getLogger("switchboard.agents")

CONFIG_ERROR_EXIT = 2  # `switchboard agent run` exits so on a config error: restarting cannot help
LINE_LIMIT = 64 * 1024
KILL_WAIT = 5.0
"""How long a killed agent's exit (and the end of its output) is waited for."""
STOP_TIMEOUT = 10.0
"""After the server's drain, how long agents get to exit before they are killed."""
SUPERVISOR_PID_ENV = "SWITCHBOARD_SUPERVISOR_PID"
"""Tells an agent which process started it: when that one is gone, the agent kills its process group."""
DRAIN_LIMIT_ENV = "SWITCHBOARD_AGENT_DRAIN_LIMIT"
"""Seconds an agent's drain may last before it kills its process group (jobs included) itself."""


@dataclass(frozen=True)
class SupervisorSettings:
    directory: str = ""
    """Where the agent-*.yaml files are; empty: no agents are run."""
    restart_delay: float = 1.0
    """Wait before the first restart of a crashed agent; doubled on each crash in a row."""
    restart_max_delay: float = 30.0
    """The longest wait between restarts. An agent that had run this long before it crashed starts again
    from `restart_delay`."""

    def restart_wait(self, crashes_in_a_row: int) -> float:
        return min(self.restart_max_delay, self.restart_delay * 2.0 ** (crashes_in_a_row - 1))


class AgentProcess:
    """One agent's child process and its restarts."""

    def __init__(self, config: AgentConfig, env: Mapping[str, str], settings: SupervisorSettings) -> None:
        self.config = config
        self.env = dict(env)
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._killed = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"agent {self.config.name}")

    def stop(self) -> None:
        """Ask the agent to drain and exit (SIGTERM), and restart it no more."""
        self._stopping.set()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the agent and its job processes now (SIGKILL to its process group); no restart."""
        self._stopping.set()
        self._killed = True
        if self.process is not None and self.process.returncode is None:
            _kill_group(self.process.pid)

    async def wait(self, grace: float) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            log.warning("agent %s did not stop within %gs; killing it", self.config.name, grace)
            if self.process is not None:
                _kill_group(self.process.pid)
            try:
                await asyncio.wait_for(self._task, KILL_WAIT)
            except TimeoutError:
                log.error("agent %s is still there after SIGKILL", self.config.name)

    async def _supervise(self) -> None:
        crashes = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                break
            if code == CONFIG_ERROR_EXIT:
                log.error(
                    "agent %s stopped: its configuration is wrong (see its output above)", self.config.name
                )
                return
            if time.monotonic() - started >= self.settings.restart_max_delay:
                crashes = 0  # it had been running well: this crash starts a new series
            crashes += 1
            delay = self.settings.restart_wait(crashes)
            log.warning("agent %s exited with code %s; restarting in %gs", self.config.name, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        log.info("agent %s stopped", self.config.name)

    async def _run_once(self) -> int | None:
        """Run the agent until it exits; its exit status, or None if it could not be started."""
        command = [sys.executable, "-m", "switchboard", "agent", "run", self.config.source]
        try:
            self.process = process = await asyncio.create_subprocess_exec(
                *command,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group: a Ctrl-C at the terminal reaches the server, which stops the
                # agents in order (drain first); the kill at the end takes the agent's job processes too.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            log.error("agent %s could not be started: %s", self.config.name, exc)
            return None
        if self._killed:  # killed or stopped while it was being started
            _kill_group(process.pid)
        elif self._stopping.is_set():
            process.send_signal(signal.SIGTERM)
        log.info("agent %s started pid=%d", self.config.name, process.pid)
        assert process.stdout is not None
        copying = asyncio.create_task(copy_lines(process.stdout, f"{self.config.name} | ".encode()))
        code = await process.wait()
        # Its job processes ignore SIGTERM and outlive a crashed agent (in rooms, holding its output pipe):
        # the whole group goes with it.
        _kill_group(process.pid)
        self.process = None  # its pid may now be reused: never signal it again
        try:
            await asyncio.wait_for(copying, KILL_WAIT)
        except TimeoutError:  # something outside the group kept the pipe open; its lines are lost
            copying.cancel()
        return code


class AgentSupervisor:
    """Starts the enabled agents of a directory and keeps them running until stopped."""

    def __init__(
        self, settings: SupervisorSettings, env: Mapping[str, str], drain_timeout: float = 60.0
    ) -> None:
        """`drain_timeout`: the server's; an agent still draining well after it kills itself."""
        self.settings = settings
        # (LIVEKIT_AGENT_NAME and its override are refused by the agent itself: runner.agent_server.)
        self.env = dict(env) | {
            "PYTHONUNBUFFERED": "1",
            SUPERVISOR_PID_ENV: str(os.getpid()),
            # Past the server's drain, the jobs are terminated: half of the stop timeout is for them to
            # close; the other half, the server's kill stands behind the agent's own.
            DRAIN_LIMIT_ENV: str(drain_timeout + STOP_TIMEOUT / 2),
        }
        self.agents: dict[str, AgentProcess] = {}

    def start(self) -> None:
        """Start every enabled, valid agent; a bad or disabled one is reported and skipped."""
        directory = Path(self.settings.directory)
        try:
            paths = agent_config_files(directory)
        except OSError as exc:
            log.error("agents directory %s cannot be read: %s", directory, exc.strerror)
            return
        if not paths:
            log.warning("agents directory %s has no agent-*.yaml", directory)
        for path in paths:
            try:
                config = load_agent_config(path.resolve(), self.env)
            except AgentConfigError as exc:
                log.error("agent not started: %s", exc)
                continue
            if not config.enabled:
                log.info("agent %s not started: %s says enabled: false", config.name, path)
                continue
            if config.name in self.agents:
                log.error("agent not started: %s: a second agent named '%s'", path, config.name)
                continue
            agent = self.agents[config.name] = AgentProcess(config, self.env, self.settings)
            agent.start()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    def kill(self) -> None:
        for agent in self.agents.values():
            agent.kill()

    async def wait(self, grace: float = STOP_TIMEOUT) -> None:
        await asyncio.gather(*(agent.wait(grace) for agent in self.agents.values()))


async def copy_lines(stream: asyncio.StreamReader, prefix: bytes) -> None:
    """Copy a child's output to our stderr, each line prefixed; read in chunks, so that no line is too
    long (a very long one is cut into pieces)."""
    pending = b""
    while chunk := await stream.read(LINE_LIMIT):
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) >= LINE_LIMIT:
            lines, pending = [*lines, pending], b""
        sys.stderr.buffer.write(b"".join(prefix + line + b"\n" for line in lines))
        sys.stderr.buffer.flush()
    if pending:
        sys.stderr.buffer.write(prefix + pending + b"\n")
        sys.stderr.buffer.flush()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, signal.SIGKILL)


# Looked up here, not in the child: between fork and exec, a child of a threaded process must not load
# libraries (dlopen can deadlock on a lock another thread held at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it if the server dies without stopping it."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
