"""The engine in a running process: the wall clock, the deadline loop, and who carries out decisions."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from switchboard.core.engine import Engine
from switchboard.core.events import Decision, DisconnectParticipant, JobEnded, RoomClosed, RoomStarted

log = logging.getLogger("switchboard.core")

# The deadline loop wakes at least this often, so a deadline added while it sleeps is late by at most this.
MAX_TICK_INTERVAL = 1.0


class Runtime:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.now = clock
        self._effects: dict[type[Any], list[Callable[[Any], None]]] = {}
        self._ticker: asyncio.Task[None] | None = None

    def on(self, decision_type: type[Any], effect: Callable[[Any], None]) -> None:
        """Register who carries out one type of decision (workers, rtc)."""
        self._effects.setdefault(decision_type, []).append(effect)

    def flush(self) -> None:
        """Carry out every decision the engine has queued; call after each engine call."""
        for decision in self.engine.take_decisions():
            _log_decision(decision)
            for effect in self._effects.get(type(decision), ()):
                try:
                    effect(decision)
                except Exception:
                    log.exception("effect failed decision=%s", type(decision).__name__)

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_forever(), name="switchboard-deadlines")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    async def _tick_forever(self) -> None:
        while True:
            now = self.now()
            self.engine.tick(now)
            self.flush()
            deadline = self.engine.next_deadline()
            delay = MAX_TICK_INTERVAL if deadline is None else min(MAX_TICK_INTERVAL, deadline - now)
            await asyncio.sleep(max(delay, 0.01))


def _log_decision(decision: Decision) -> None:
    match decision:
        case RoomStarted(room, sid):
            log.info("room started room=%s sid=%s", room, sid)
        case RoomClosed(room, sid, reason):
            log.info("room closed room=%s sid=%s reason=%r", room, sid, reason)
        case JobEnded(job):
            log.info(
                "job ended job=%s dispatch=%s room=%s status=%s error=%r",
                job.id,
                job.dispatch_id,
                job.room,
                job.status.value,
                job.error,
            )
        case DisconnectParticipant(room=room, identity=identity, reason=reason):
            log.info("participant disconnected room=%s identity=%s reason=%r", room, identity, reason)
