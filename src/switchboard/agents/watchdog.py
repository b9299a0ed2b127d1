"""An agent process's last line of defence: no agent or job process outlives the server that started it,
and no drain hangs forever.

A thread, not an asyncio task: livekit-agents' drain can keep the event loop from ever running a timer.
When the server that started the agent is gone (even killed with SIGKILL, which no handler sees), or a
drain outlives its bound, the agent's whole process group is killed: the agent and its job processes.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("switchboard.agents")

POLL_INTERVAL = 0.2


class Watchdog:
    def __init__(self, parent_pid: int | None, drain_limit: float | None) -> None:
        """`parent_pid`: the server's pid (None: not started by a server); `drain_limit`: seconds a drain
        may last before everything is killed (None: unbounded, as a drain of its own choosing)."""
        self.parent_pid = parent_pid
        self.drain_limit = drain_limit
        self._deadline: float | None = None
        self._why = ""
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="switchboard-watchdog", daemon=True).start()

    def draining(self) -> None:
        """The drain begins: arm its bound."""
        if self.drain_limit is not None:
            self.limit(self.drain_limit, f"the drain did not end within {self.drain_limit:g}s")

    def limit(self, seconds: float, why: str) -> None:
        """End everything in `seconds` at the latest (an earlier limit stands)."""
        deadline = time.monotonic() + seconds
        with self._lock:
            if self._deadline is None or deadline < self._deadline:
                self._deadline, self._why = deadline, why

    def check(self) -> str | None:
        """Why everything must end now, or None."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            return f"the server (pid {self.parent_pid}) is gone"
        with self._lock:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return self._why
        return None

    def _watch(self) -> None:
        while (why := self.check()) is None:
            time.sleep(POLL_INTERVAL)
        log.error("stopping now: %s; this agent and its job processes are killed", why)
        end_everything()


def end_everything() -> None:
    """Kill this process and every process it started: its whole process group when it leads one (as
    under `serve --agents`), else its descendants, then itself."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(1)


def descendants(root: int) -> list[int]:
    """The processes below `root` in the process tree, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the fields after its last ')' are plain.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found
