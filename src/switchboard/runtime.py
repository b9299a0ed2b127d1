"""The engine in a running process: the one gateway to it, the wall clock and the deadline loop.

Every change to the engine goes through `Runtime.call`, which calls the engine and then carries out the
decisions that call queued, through the effects wired in `switchboard.effects`: a caller cannot forget
them. `Runtime.engine` is for reading state only. docs/engine-gateway.md says what crosses this gateway.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from switchboard.core.engine import Engine
from switchboard.core.events import Decision, DisconnectParticipant, JobEnded, RoomClosed, RoomStarted

log = logging.getLogger("switchboard.core")

# The deadline loop wakes at least this often, so a deadline added while it sleeps is late by at most this.
MAX_TICK_INTERVAL = 1.0

T = TypeVar("T")
D = TypeVar("D")

Effect = Callable[[Any], None]


class Effects:
    """Who carries out each type of decision, in the order they were added (`switchboard.effects`)."""

    def __init__(self) -> None:
        self._by_type: dict[type[Any], list[Effect]] = {}

    def on(self, decision_type: type[D], *effects: Callable[[D], None]) -> None:
        self._by_type.setdefault(decision_type, []).extend(effects)

    def of(self, decision_type: type[Any]) -> list[Effect]:
        return self._by_type.get(decision_type, [])


class Runtime:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        """Read only: changes go through `call`, or their decisions would wait for the next call."""
        self.now = clock
        self.effects = Effects()
        """Wired once the adapters exist (they need the runtime first): `switchboard.effects.wire`."""
        self._ticker: asyncio.Task[None] | None = None

    def call(self, change: Callable[[Engine], T]) -> T:
        """Apply `change` to the engine, then carry out the decisions it made, also when it raised.

        Synchronous: every effect has run (a worker's message queued, a participant told) on return."""
        self._carry_out(self.engine.take_decisions(), stray=True)
        try:
            return change(self.engine)
        finally:
            self._carry_out(self.engine.take_decisions())

    def _carry_out(self, decisions: list[Decision], *, stray: bool = False) -> None:
        if stray and decisions:
            # Only a change made around the gateway leaves decisions behind: carried out late, and said.
            log.error("decisions made outside Runtime.call: %s", [type(d).__name__ for d in decisions])
        for decision in decisions:
            _log_decision(decision)
            for effect in self.effects.of(type(decision)):
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
            self._tick(now)
            deadline = self.engine.next_deadline()
            delay = MAX_TICK_INTERVAL if deadline is None else min(MAX_TICK_INTERVAL, deadline - now)
            await asyncio.sleep(max(delay, 0.01))

    def _tick(self, now: float) -> None:
        self.call(lambda engine: engine.tick(now))


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
