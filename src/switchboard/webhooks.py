"""Webhooks: engine decisions, as the `WebhookEvent`s LiveKit sends, handed to the delivery process.

The server's part is the cheap one: it writes each event from the facts of the moment it was decided and
hands it, serialized, to `switchboard.webhook_delivery` (a process of its own, started with the server,
which writes the JSON body, signs it and posts it to every URL of the `webhook` config section, in order,
with retries). When that process falls behind, the pipe to it fills; the server then drops new events
without making them and tells how many in the next one (`num_dropped`). A delivery process that dies is
started again, and what it held is lost (logged).
"""

import asyncio
import contextlib
import logging
import sys
from typing import Any, Protocol

from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from switchboard.core import ids
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.events import (
    JobEnded,
    JobStarted,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomStarted,
    TrackPublished,
    TrackUnpublished,
)
from switchboard.core.jobs import Job
from switchboard.runtime import Runtime
from switchboard.webhook_delivery import FRAME, WebhookSettings, frame, settings_frame
from switchboard.wire import job_end_reason, job_to_proto, participant_to_proto, room_to_proto, track_to_proto

log = logging.getLogger("switchboard.webhooks")

EVENT_ID = "EV_"
PIPE_BACKLOG = 1 << 20
"""Bytes of events written to the delivery process and not yet read by it, beyond which new events are
dropped: it has fallen behind, and its own queues are full."""
RESTART_DELAY = 1.0
"""The wait before a delivery process that died is started again."""
WRITE_DELAY = 0.02
"""How long events wait to be written to the delivery process, with every other event of that time: a
write wakes the process, and waking it on every turn of the server's loop that made an event (three per
dispatch) cost 13 % of the dispatch p50 on a 2-core machine, against none with this delay
(bench/dispatch.py --phases observed, the webhooks sent where nobody listened, so that only the writes
counted). 20 ms more before a webhook goes out is lost in a network's own delays."""


class Outbox(Protocol):
    """Where the events go: the delivery process, or (in tests) a `webhook_delivery.Delivery` in this one."""

    def wanted(self) -> bool:
        """Whether an event made now would be kept; if not, it is counted as dropped."""

    def put(self, message: WebhookEvent) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class DeliveryProcess:
    """The delivery process, fed through its standard input (`webhook_delivery`'s frames)."""

    def __init__(
        self, settings: WebhookSettings, api_secret: str, log_level: str, *, backlog: int = PIPE_BACKLOG
    ) -> None:
        self._settings_frame = settings_frame(settings, api_secret, log_level)
        self._backlog = backlog
        self._grace = settings.shutdown_grace
        self._process: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._frames: list[bytes] = []
        self._write: asyncio.TimerHandle | None = None
        self._dropped = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._keep_running(), name="webhook delivery process")

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "switchboard.webhook_delivery",
            stdin=asyncio.subprocess.PIPE,
            # Not in a session of its own: with the kernel's autogroups, a new session is scheduled as a
            # group of its own, beside the server's, and SCHED_IDLE would then yield only within it.
        )
        assert process.stdin is not None
        self._process, self._stdin = process, process.stdin
        self._stdin.write(self._settings_frame)

    async def _keep_running(self) -> None:
        while True:
            assert self._process is not None
            code = await self._process.wait()
            self._stdin = None
            if self._stopping:
                return
            log.error(
                "webhook delivery process exited (code %s); the events it held are lost; restarting in %gs",
                code,
                RESTART_DELAY,
            )
            if not await self._restart():
                return

    async def _restart(self) -> bool:
        """Start a new delivery process after RESTART_DELAY, and again until one starts; False when the
        server stops first."""
        while True:
            await asyncio.sleep(RESTART_DELAY)
            if self._stopping:
                return False
            try:
                await self._spawn()
            except OSError as exc:
                log.error(
                    "webhook delivery process could not start (%s); retrying in %gs", exc, RESTART_DELAY
                )
                continue
            if self._stopping and self._stdin is not None:  # stop() came during the spawn
                self._stdin.close()
            return True

    def wanted(self) -> bool:
        pipe = self._stdin.transport if self._stdin is not None else None
        if pipe is None or pipe.is_closing() or pipe.get_write_buffer_size() > self._backlog:
            self._dropped += 1
            return False
        return True

    def put(self, message: WebhookEvent) -> None:
        if self._write is None:  # one write for the events of WRITE_DELAY
            self._write = asyncio.get_running_loop().call_later(WRITE_DELAY, self._flush)
        self._frames.append(frame(message.SerializeToString(), self._dropped))
        self._dropped = 0

    def _flush(self) -> None:
        if self._write is not None:
            self._write.cancel()
            self._write = None
        frames, self._frames = self._frames, []
        if self._stdin is None or self._stdin.transport.is_closing():  # it died since they were made
            self._dropped += len(frames) + sum(FRAME.unpack_from(f)[1] for f in frames)
            return
        self._stdin.write(b"".join(frames))

    async def stop(self) -> None:
        """Close the pipe: the process delivers what it holds within its grace, and ends."""
        self._stopping = True
        process = self._process
        if process is None:
            return
        if self._frames:
            self._flush()
        if self._stdin is not None:
            with contextlib.suppress(ConnectionError):
                self._stdin.close()
        try:
            await asyncio.wait_for(process.wait(), self._grace + 2)
        except TimeoutError:
            log.warning("webhook delivery process did not end within its grace; killed")
            process.kill()
            await process.wait()
        if self._watch is not None:
            await self._watch


class Webhooks:
    """Turns the engine's decisions into webhook events and hands them to one sender per URL."""

    def __init__(self, outbox: Outbox, runtime: Runtime) -> None:
        self.outbox = outbox
        self.runtime = runtime

    async def start(self) -> None:
        await self.outbox.start()

    async def stop(self) -> None:
        await self.outbox.stop()

    # The engine's decisions, as events (wired in switchboard.effects). Each handler first asks whether
    # the outbox has room, so that an event it would drop costs no message.

    def _emit(self, name: str, facts: dict[str, Any]) -> None:
        event = WebhookEvent(event=name, id=ids.new_id(EVENT_ID), created_at=int(self.runtime.now()), **facts)
        self.outbox.put(event)

    def _room(self, name: str, sid: str = "") -> models.Room:
        room = self.runtime.engine.find_room(name, self.runtime.now())
        if room is None or (sid and room.sid != sid):
            return models.Room(name=name, sid=sid)
        return room_to_proto(room)

    # A room that moves between nodes (its node lost its lease and handed it over, or died) neither
    # finishes nor starts again: the old node does not send `room_finished` nor its jobs' ends, the new one
    # does not send `room_started`, as the room goes on with the same sid, dispatches and jobs.

    def room_started(self, decision: RoomStarted) -> None:
        if self.outbox.wanted() and not decision.restored:
            room = self._room(decision.room, decision.sid)
            self._emit("room_started", {"room": room})

    def room_closed(self, decision: RoomClosed) -> None:
        if self.outbox.wanted() and not decision.handed_over:
            room = self._room(decision.room, decision.sid)
            reason = _room_end_reason(decision.reason)
            self._emit("room_finished", {"room": room, "room_end_reason": reason})

    def participant_joined(self, decision: ParticipantJoined) -> None:
        if self.outbox.wanted():
            room, participant = self._room(decision.room), participant_to_proto(decision.participant)
            self._emit("participant_joined", {"room": room, "participant": participant})

    def participant_left(self, decision: ParticipantLeft) -> None:
        if self.outbox.wanted():
            # As LiveKit: one whose media never connected (it joined, ICE did not complete) left by an
            # aborted connection attempt, not as a participant who was there.
            event = "participant_left" if decision.participant.active else "participant_connection_aborted"
            room = self._room(decision.room)
            participant = participant_to_proto(decision.participant, state="DISCONNECTED")
            self._emit(event, {"room": room, "participant": participant})

    def _track_event(self, name: str, decision: TrackPublished | TrackUnpublished) -> None:
        if self.outbox.wanted():
            room, participant = self._room(decision.room), participant_to_proto(decision.participant)
            track = track_to_proto(decision.track)
            self._emit(name, {"room": room, "participant": participant, "track": track})

    def track_published(self, decision: TrackPublished) -> None:
        self._track_event("track_published", decision)

    def track_unpublished(self, decision: TrackUnpublished) -> None:
        self._track_event("track_unpublished", decision)

    def _job_event(self, name: str, job: Job) -> None:
        if not self.outbox.wanted():
            return
        room = self.runtime.engine.find_room(job.room, self.runtime.now())
        dispatch = room.dispatches.get(job.dispatch_id) if room is not None else None
        spec = (
            dispatch.spec if dispatch is not None else DispatchSpec(job.agent_name, deployment=job.deployment)
        )
        message = job_to_proto(job, spec, room_to_proto(room) if room is not None else None)
        if job.ended:
            message.state.reason = job_end_reason(job)
        self._emit(name, {"room": message.room, "job": message})

    def job_started(self, decision: JobStarted) -> None:
        self._job_event("agent_job_started", decision.job)

    def job_ended(self, decision: JobEnded) -> None:
        if not decision.handed_over:
            self._job_event("agent_job_ended", decision.job)


def _room_end_reason(reason: str) -> models.RoomEndReason:
    if reason.startswith("deleted"):
        return models.ROOM_END_API_DELETE
    if reason.endswith("timeout"):
        return models.ROOM_END_IDLE_TIMEOUT
    if reason == "server shut down":
        return models.ROOM_END_SERVER_SHUTDOWN
    return models.ROOM_END_UNKNOWN
