"""Soak the server: an hour (or --minutes) of churn — rooms opened and closed, participants publishing
audio, agent workers connecting and crashing, dispatches created and deleted — while the server's memory
and open file descriptors are read from /proc. It stops by itself.

  rooms         --rooms-at-once rooms live at any time, each for --room-seconds, opened three ways in
                turn: CreateRoom with the agent, CreateDispatch on a missing room (which adds LiveKit's
                implicit automatic dispatch; no automatic worker is connected, so its job fails after
                agents.pending_timeout with a reason), or a participant's join followed by CreateDispatch.
                Half-way through its life a room's first dispatch is deleted and another created. At the
                end the participants leave; every other room is deleted (DeleteRoom), the rest close by
                their departure timeout.
  participants  --participants per room, Python rtc SDK, each publishing a 440 Hz tone (and subscribed
                to the others' tones, so the server relays audio).
  workers       --workers protocol-level workers (aiohttp WebSockets speaking the `/agent` protobuf, as
                bench/dispatch.py's) registered as agent `soak`: they accept every offer, report the job
                running, report some jobs failed after a few seconds (--job-failure-rate: the restart
                policy offers them again), and every --crash-every seconds one worker crashes (its TCP
                connection is aborted, no close frame) and a new one connects in its place.

  jobs lost     before a room ends, every dispatch created in it must be listed (ListDispatch) and every
                job of each must be running or have ended with a reason; a job still pending (e.g. waiting
                out a restart back-off) is given --settle seconds. Also counted: a job assigned to a second
                live worker while the first still runs it. Target: 0.
  memory        server RSS and open file descriptors every --sample-every seconds; the slope of RSS (least
                squares) after --warmup-minutes. Target: flat. After the churn stops and everything has
                left, RSS and descriptors are read once more.

The load is modest on purpose (a 2-core machine runs the server, the participants and the workers).

    .venv/bin/python bench/soak.py --minutes 10      # the README's run
    .venv/bin/python bench/soak.py                   # an hour
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from google.protobuf.message import DecodeError
from livekit import api, rtc
from livekit.protocol import agent

from common import (
    NOISY_OTHER_CPU,
    Server,
    machine,
    machine_busy_seconds,
    own_server,
    process_cpu_seconds,
    process_rss_kib,
)
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

AGENT_NAME = "soak"
RATE = 48000
FRAME = RATE // 100  # 10 ms
TONE_HZ = 440
DRAIN_DEADLINE = 120.0  # after the churn: rooms finishing, workers closing
COOL_DOWN = 10.0  # after everything left, before the last reading (departure timeouts, deadlines)
REGISTER_DEADLINE = 10.0
STATUS_INTERVAL = 2.5  # livekit-agents sends update_worker this often
SERVER_CONFIG = {
    "rtc": {"ice_addresses": ["127.0.0.1"]},
    "room": {"empty_timeout": 20, "departure_timeout": 2},
    "agents": {
        # The implicit automatic dispatch's job fails, with a reason, within a room's life.
        "pending_timeout": 8,
        "reconnect_grace": 2,
        "restart_backoff": 0.5,
        "restart_backoff_max": 2,
        "start_timeout": 10,
        "availability_timeout": 3,
    },
}
TARGET_FLAT_MB_PER_HOUR = 5.0
PROGRESS = [sys.stdout]  # the readings as they are taken; stderr with --json, so stdout stays JSON


# ---------------------------------------------------------------------------------------------- workers


def message(**variant: Any) -> bytes:
    return agent.WorkerMessage(**variant).SerializeToString()


REGISTER = message(
    register=agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name=AGENT_NAME, version="soak")
)
AVAILABLE = message(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE, load=0.0))


def job_update(job_id: str, status: int, error: str = "") -> bytes:
    return message(update_job=agent.UpdateJobStatus(job_id=job_id, status=status, error=error))


@dataclass
class Ledger:
    """What the workers and the checks saw."""

    assignments: int = 0
    terminations: int = 0
    reported_failures: int = 0
    crashes: int = 0
    double_runs: list[str] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)  # job id → worker id, live workers only
    errors: list[str] = field(default_factory=list)
    dispatches: int = 0
    jobs_checked: int = 0
    lost: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # why the checked jobs that ended, ended
    rooms: int = 0
    participants: int = 0
    api_errors: int = 0

    def error(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)


class Worker:
    """A protocol-level agent worker: accepts, runs, sometimes fails a job; can crash."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, worker_id: str, ledger: Ledger, fail_rate: float):
        self.ws = ws
        self.worker_id = worker_id
        self.ledger = ledger
        self.fail_rate = fail_rate
        self.jobs: set[str] = set()
        self.crashed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.reader = asyncio.create_task(self.read())
        self.status = asyncio.create_task(self.report_status())

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, data: bytes) -> None:
        if not self.crashed and not self.ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self.ws.send_bytes(data)

    async def report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            await self.send(AVAILABLE)

    async def fail_later(self, job_id: str) -> None:
        await asyncio.sleep(random.uniform(2, 5))
        if job_id in self.jobs and not self.crashed:
            self.jobs.discard(job_id)
            self.ledger.running.pop(job_id, None)
            self.ledger.reported_failures += 1
            await self.send(job_update(job_id, agent.JS_FAILED, "soak: the job crashed"))

    async def read(self) -> None:
        ledger = self.ledger
        try:
            async for frame in self.ws:
                if frame.type is not aiohttp.WSMsgType.BINARY:
                    continue
                msg = agent.ServerMessage.FromString(frame.data)
                kind = msg.WhichOneof("message")
                if kind == "availability":
                    job = msg.availability.job
                    answer = agent.AvailabilityResponse(
                        job_id=job.id,
                        available=True,
                        participant_identity=f"agent-{job.id}",
                        participant_attributes={"lk.agent.name": AGENT_NAME},
                    )
                    await self.send(message(availability=answer))
                elif kind == "assignment":
                    job_id = msg.assignment.job.id
                    ledger.assignments += 1
                    holder = ledger.running.get(job_id)
                    if holder is not None and holder != self.worker_id:
                        ledger.double_runs.append(f"{job_id} on {holder} and {self.worker_id}")
                    ledger.running[job_id] = self.worker_id
                    self.jobs.add(job_id)
                    await self.send(job_update(job_id, agent.JS_RUNNING))
                    if random.random() < self.fail_rate:
                        self.spawn(self.fail_later(job_id))
                elif kind == "termination":
                    job_id = msg.termination.job_id
                    ledger.terminations += 1
                    self.jobs.discard(job_id)
                    if ledger.running.get(job_id) == self.worker_id:
                        del ledger.running[job_id]
                    # As a livekit-agents job process does when it has shut down.
                    await self.send(job_update(job_id, agent.JS_SUCCESS))
        except (aiohttp.ClientError, ConnectionError, DecodeError) as exc:
            if not self.crashed:
                ledger.error(f"worker {self.worker_id}: {exc!r}")
        if not self.crashed:
            ledger.error(f"worker {self.worker_id}: connection ended by the server")

    def forget_jobs(self) -> None:
        for job_id in self.jobs:
            if self.ledger.running.get(job_id) == self.worker_id:
                del self.ledger.running[job_id]
        self.jobs.clear()

    def crash(self) -> None:
        """Die as a killed process does: the TCP connection is aborted, no close frame."""
        self.crashed = True
        self.forget_jobs()
        transport = self.ws._writer.transport  # aiohttp has no public way to abort a WebSocket
        transport.abort()
        self.stop_tasks()

    def stop_tasks(self) -> None:
        for task in (self.reader, self.status, *self.tasks):
            task.cancel()

    async def close(self) -> None:
        self.crashed = True  # what follows is expected
        self.forget_jobs()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self.stop_tasks()


async def connect_worker(
    session: aiohttp.ClientSession, server: Server, ledger: Ledger, fail_rate: float
) -> Worker:
    token = mint_token(server.api_key, server.api_secret, video=VideoGrant(agent=True), ttl=7200)
    ws = await session.ws_connect(f"{server.url}/agent", headers={"Authorization": f"Bearer {token}"})
    await ws.send_bytes(REGISTER)
    frame = await ws.receive(timeout=REGISTER_DEADLINE)
    reply = agent.ServerMessage.FromString(frame.data)
    if reply.WhichOneof("message") != "register":
        await ws.close()
        raise RuntimeError(f"expected a register response, got {reply.WhichOneof('message')}")
    await ws.send_bytes(AVAILABLE)
    return Worker(ws, reply.register.worker_id, ledger, fail_rate)


class Pool:
    """--workers workers; one crashes every --crash-every seconds and a new one replaces it."""

    def __init__(
        self, session: aiohttp.ClientSession, server: Server, ledger: Ledger, args: argparse.Namespace
    ):
        self.session, self.server, self.ledger, self.args = session, server, ledger, args
        self.workers: list[Worker] = []

    async def start(self) -> None:
        for _ in range(self.args.workers):
            self.workers.append(
                await connect_worker(self.session, self.server, self.ledger, self.args.job_failure_rate)
            )

    async def churn(self, until: float) -> None:
        while time.monotonic() + self.args.crash_every < until:
            await asyncio.sleep(self.args.crash_every)
            victim = self.workers.pop(random.randrange(len(self.workers)))
            victim.crash()
            self.ledger.crashes += 1
            try:
                worker = await connect_worker(
                    self.session, self.server, self.ledger, self.args.job_failure_rate
                )
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                self.ledger.error(f"replacement worker: {exc!r}")
                continue
            self.workers.append(worker)

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))


# ---------------------------------------------------------------------------------------------- rooms


def tone_frames() -> list[rtc.AudioFrame]:
    """One second of a quiet 440 Hz tone as 10 ms frames, played in a loop."""
    t = np.arange(RATE) / RATE
    pcm = (3000 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16).tobytes()
    return [rtc.AudioFrame(pcm[i : i + 2 * FRAME], RATE, 1, FRAME) for i in range(0, len(pcm), 2 * FRAME)]


TONE: list[rtc.AudioFrame] = []


class Participant:
    def __init__(self, server: Server, room: str, identity: str) -> None:
        self.server, self.room_name, self.identity = server, room, identity
        self.room = rtc.Room()
        self.task: asyncio.Task[None] | None = None

    async def join(self) -> None:
        video = VideoGrant(room_join=True, room=self.room_name)
        token = mint_token(self.server.api_key, self.server.api_secret, video=video, identity=self.identity)
        await self.room.connect(self.server.url.replace("http://", "ws://", 1), token)
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self.task = asyncio.create_task(self.play(source))

    async def play(self, source: rtc.AudioSource) -> None:
        for frame in itertools.cycle(TONE):  # capture_frame waits once its 1 s queue is full: real time
            await source.capture_frame(frame)

    async def leave(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(Exception):
            await self.room.disconnect()


async def check_jobs(
    lkapi: api.LiveKitAPI, room: str, created: set[str], ledger: Ledger, settle: float
) -> None:
    """Every dispatch created in `room` is listed; each job is running or ended with a reason. A job still
    pending may be between attempts: it gets `settle` seconds."""
    deadline = time.monotonic() + settle
    while True:
        problems: list[str] = []
        unsettled: list[str] = []
        statuses: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        try:
            dispatches = await lkapi.agent_dispatch.list_dispatch(room)
        except api.TwirpError as exc:
            ledger.api_errors += 1
            problems.append(f"{room}: ListDispatch failed: {exc}")
            dispatches = []
        listed = {d.id for d in dispatches}
        problems += [f"{room}: dispatch {d} not listed" for d in created - listed]
        jobs = 0
        for dispatch in dispatches:
            if dispatch.id not in created and dispatch.agent_name == AGENT_NAME:
                continue  # not ours to check (cannot happen: every room is this script's)
            current: dict[str, Any] = {}
            for job in dispatch.state.jobs:
                current[job.id] = job  # attempts are listed in order: the last one is the job's state now
            if not current:
                problems.append(f"{room}: dispatch {dispatch.id} ({dispatch.agent_name!r}) has no job")
            for job in current.values():
                jobs += 1
                status = agent.JobStatus.Name(job.state.status)
                statuses[status] += 1
                if job.state.status == agent.JS_RUNNING:
                    continue
                if job.state.status in (agent.JS_SUCCESS, agent.JS_FAILED):
                    if not job.state.error:
                        problems.append(f"{room}: job {job.id} {status} with no reason")
                    else:
                        reasons[re.sub(r"\b(AW|AJ|AD|RM|PA)_\w+", r"\1_…", job.state.error)] += 1
                    continue
                unsettled.append(f"{room}: job {job.id} {status} (reason {job.state.reason})")
        if (not unsettled and not problems) or time.monotonic() > deadline:
            ledger.lost += problems + unsettled
            ledger.jobs_checked += jobs
            ledger.statuses.update(statuses)
            ledger.reasons.update(reasons)
            return
        await asyncio.sleep(0.5)


async def room_life(
    index: int, server: Server, lkapi: api.LiveKitAPI, ledger: Ledger, args: argparse.Namespace
) -> None:
    room = f"soak-{index}-{uuid.uuid4().hex[:6]}"
    way = index % 3
    created: set[str] = set()
    people = [Participant(server, room, f"p{index}-{i}") for i in range(args.participants)]
    ledger.rooms += 1
    try:
        if way == 0:
            dispatch = api.RoomAgentDispatch(agent_name=AGENT_NAME)
            await lkapi.room.create_room(api.CreateRoomRequest(name=room, agents=[dispatch]))
            created |= {d.id for d in await lkapi.agent_dispatch.list_dispatch(room)}
        elif way == 1:
            request = api.CreateAgentDispatchRequest(room=room, agent_name=AGENT_NAME)
            created.add((await lkapi.agent_dispatch.create_dispatch(request)).id)
        await asyncio.gather(*(p.join() for p in people))
        ledger.participants += len(people)
        if way == 2:
            request = api.CreateAgentDispatchRequest(room=room, agent_name=AGENT_NAME)
            created.add((await lkapi.agent_dispatch.create_dispatch(request)).id)
        ledger.dispatches += len(created)
        await asyncio.sleep(args.room_seconds / 2)
        # Churn the dispatches: the first one goes, a new one comes.
        first = sorted(created)[0] if created else None
        if first is not None:
            await lkapi.agent_dispatch.delete_dispatch(first, room)
            created.discard(first)  # gone from ListDispatch with its jobs (terminated, workers told)
            request = api.CreateAgentDispatchRequest(room=room, agent_name=AGENT_NAME, metadata="second")
            new = (await lkapi.agent_dispatch.create_dispatch(request)).id
            created.add(new)
            ledger.dispatches += 1
        await asyncio.sleep(args.room_seconds / 2)
        await check_jobs(lkapi, room, created, ledger, args.settle)
    except (api.TwirpError, rtc.ConnectError, aiohttp.ClientError, TimeoutError) as exc:
        ledger.api_errors += 1
        ledger.error(f"room {room}: {exc!r}")
    finally:
        await asyncio.gather(*(p.leave() for p in people))
        if index % 2 == 0:
            with contextlib.suppress(api.TwirpError, aiohttp.ClientError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))


async def rooms(
    server: Server, lkapi: api.LiveKitAPI, ledger: Ledger, args: argparse.Namespace, until: float
) -> None:
    gate = asyncio.Semaphore(args.rooms_at_once)
    running: set[asyncio.Task[None]] = set()
    for index in itertools.count():
        await gate.acquire()
        if time.monotonic() + args.room_seconds > until:
            gate.release()
            break

        async def one(i: int) -> None:
            try:
                await room_life(i, server, lkapi, ledger, args)
            finally:
                gate.release()

        task = asyncio.create_task(one(index))
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(args.room_seconds / args.rooms_at_once)  # staggered, not all at once
    if running:
        await asyncio.gather(*running, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- readings


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Reading:
    t: float
    rss_kib: int
    fds: int
    server_cpu: float  # cores, since the previous reading
    other_cpu: float | None


async def sample(
    server: Server, started: float, every: float, readings: list[Reading], ledger: Ledger
) -> None:
    assert server.pid is not None
    pid = server.pid
    last_t, last_cpu, last_machine, last_client = (
        time.monotonic(),
        process_cpu_seconds(pid),
        machine_busy_seconds(),
        time.process_time(),
    )
    while True:
        await asyncio.sleep(every)
        now, cpu, busy, client = (
            time.monotonic(),
            process_cpu_seconds(pid),
            machine_busy_seconds(),
            time.process_time(),
        )
        span = now - last_t
        server_cpu = (cpu - last_cpu) / span
        other = None
        if busy is not None and last_machine is not None:
            other = max(0.0, (busy - last_machine) / span - server_cpu - (client - last_client) / span)
        reading = Reading(now - started, process_rss_kib(pid), open_fds(pid), server_cpu, other)
        readings.append(reading)
        last_t, last_cpu, last_machine, last_client = now, cpu, busy, client
        print(
            f"  {reading.t / 60:5.1f} min  rss {reading.rss_kib / 1024:7.1f} MB  fds {reading.fds:4d}"
            f"  server cpu {server_cpu * 100:4.0f}%  others {(other or 0) * 100:4.0f}%"
            f"  rooms {ledger.rooms:4d}  assignments {ledger.assignments:4d}  crashes {ledger.crashes:3d}",
            file=PROGRESS[0],
            flush=True,
        )


def slope_mb_per_hour(readings: Sequence[Reading], warmup_s: float) -> tuple[float | None, int]:
    points = [(r.t, r.rss_kib / 1024) for r in readings if r.t >= warmup_s]
    if len(points) < 3:
        return None, len(points)
    t = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    slope_per_s = float(np.polyfit(t, y, 1)[0])
    return slope_per_s * 3600, len(points)


# ---------------------------------------------------------------------------------------------- run


async def soak(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    assert server.pid is not None
    TONE.extend(tone_frames())
    ledger = Ledger()
    readings: list[Reading] = []
    baseline = {"rss_kib": process_rss_kib(server.pid), "fds": open_fds(server.pid)}
    started = time.monotonic()
    until = started + args.minutes * 60
    async with (
        aiohttp.ClientSession() as session,
        api.LiveKitAPI(server.url, server.api_key, server.api_secret) as lkapi,
    ):
        pool = Pool(session, server, ledger, args)
        await pool.start()
        sampler = asyncio.create_task(sample(server, started, args.sample_every, readings, ledger))
        churn = asyncio.create_task(pool.churn(until))
        try:
            await asyncio.wait_for(
                rooms(server, lkapi, ledger, args, until), args.minutes * 60 + DRAIN_DEADLINE
            )
        finally:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churn
            await pool.close()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        churn_s = time.monotonic() - started
        await asyncio.sleep(COOL_DOWN)
        remaining = await lkapi.room.list_rooms(api.ListRoomsRequest())
    after = {
        "rss_kib": process_rss_kib(server.pid),
        "fds": open_fds(server.pid),
        "rooms_left": len(remaining.rooms),
    }
    slope, points = slope_mb_per_hour(readings, args.warmup_minutes * 60)
    return {
        "minutes": args.minutes,
        "churn_seconds": churn_s,
        "baseline": baseline,
        "after_cool_down": after,
        "readings": [r.__dict__ for r in readings],
        "slope_mb_per_hour": slope,
        "slope_points": points,
        "ledger": {
            "rooms": ledger.rooms,
            "participants": ledger.participants,
            "dispatches": ledger.dispatches,
            "jobs_checked": ledger.jobs_checked,
            "job_states_at_check": dict(ledger.statuses),
            "end_reasons_at_check": dict(ledger.reasons),
            "assignments": ledger.assignments,
            "terminations": ledger.terminations,
            "reported_failures": ledger.reported_failures,
            "worker_crashes": ledger.crashes,
            "jobs_lost": len(ledger.lost),
            "lost": ledger.lost[:20],
            "double_runs": ledger.double_runs[:20],
            "api_errors": ledger.api_errors,
            "errors": ledger.errors,
        },
    }


def print_report(info: dict[str, Any], args: argparse.Namespace, result: dict[str, Any]) -> None:
    ledger = result["ledger"]
    print(f"\nmachine: {info}")
    print(
        f"churn: {result['churn_seconds'] / 60:.1f} min, {ledger['rooms']} rooms, {ledger['participants']}"
        f" participants with audio, {ledger['dispatches']} dispatches ({ledger['jobs_checked']} jobs checked:"
        f" {ledger['job_states_at_check']}), {ledger['assignments']} assignments, {ledger['worker_crashes']}"
        f" worker crashes, {ledger['reported_failures']} job failures reported, {ledger['terminations']}"
        " terminations received"
    )
    for reason, count in ledger["end_reasons_at_check"].items():
        print(f"  ended, {count}x: {reason}")
    lost = ledger["jobs_lost"]
    print(f"jobs lost: {lost}   (target 0: {'met' if lost == 0 else 'MISSED'})")
    for line in ledger["lost"]:
        print(f"  {line}")
    doubles = len(ledger["double_runs"])
    print(
        f"jobs running on two live workers at once: {doubles}"
        f"   (target 0: {'met' if doubles == 0 else 'MISSED'})"
    )
    for line in ledger["double_runs"]:
        print(f"  {line}")
    if ledger["api_errors"] or ledger["errors"]:
        print(f"errors: {ledger['api_errors']} API/connect errors; {ledger['errors']}")
    readings = result["readings"]
    base, after = result["baseline"], result["after_cool_down"]
    if readings:
        peak = max(r["rss_kib"] for r in readings) / 1024
        print(
            f"server RSS: {base['rss_kib'] / 1024:.1f} MB at start, peak {peak:.1f} MB,"
            f" {readings[-1]['rss_kib'] / 1024:.1f} MB at the end of the churn,"
            f" {after['rss_kib'] / 1024:.1f} MB after {COOL_DOWN:.0f} s of cool-down"
        )
        print(
            f"server fds: {base['fds']} at start, max {max(r['fds'] for r in readings)},"
            f" {readings[-1]['fds']} at the end of the churn, {after['fds']} after cool-down"
            f" (rooms left: {after['rooms_left']})"
        )
        other = [r["other_cpu"] for r in readings if r["other_cpu"] is not None]
        if other and sum(other) / len(other) > NOISY_OTHER_CPU:
            print(
                f"note: processes other than the server and this script used"
                f" {sum(other) / len(other) * 100:.0f}% of a core on average: other work shared the machine"
            )
    slope = result["slope_mb_per_hour"]
    if slope is None:
        print(f"RSS slope after {args.warmup_minutes:.1f} min of warm-up: too few readings")
    else:
        flat = abs(slope) <= TARGET_FLAT_MB_PER_HOUR
        print(
            f"RSS slope after {args.warmup_minutes:.1f} min of warm-up: {slope:+.1f} MB/hour over"
            f" {result['slope_points']} readings   (target flat, |slope| ≤ {TARGET_FLAT_MB_PER_HOUR:g}"
            f" MB/hour: {'met' if flat else 'MISSED'})"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the churn lasts (default 60)")
    parser.add_argument(
        "--warmup-minutes", type=float, help="readings ignored for the slope (default: a third, at most 10)"
    )
    parser.add_argument(
        "--sample-every", type=float, help="seconds between readings (default: minutes, at least 5)"
    )
    parser.add_argument("--rooms-at-once", type=int, default=2)
    parser.add_argument("--participants", type=int, default=2, help="per room, each publishing a tone")
    parser.add_argument("--room-seconds", type=float, default=20.0, help="life of a room")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--crash-every", type=float, default=20.0, help="seconds between worker crashes")
    parser.add_argument("--job-failure-rate", type=float, default=0.1, help="jobs a worker reports failed")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds a pending job gets at a room's check"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rooms_at_once < 1 or args.participants < 1 or args.workers < 2:
        parser.error("--minutes > 0, --rooms-at-once ≥ 1, --participants ≥ 1, --workers ≥ 2")
    if args.room_seconds < 4 or args.crash_every < 1:
        parser.error("--room-seconds ≥ 4, --crash-every ≥ 1")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(10.0, args.minutes / 3)
    if args.sample_every is None:
        args.sample_every = max(5.0, args.minutes)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    info = machine()
    if args.json:
        PROGRESS[0] = sys.stderr
    print(
        f"soak: {args.minutes:g} min, {args.rooms_at_once} rooms at once x {args.participants} participants,"
        f" {args.workers} workers (one crashes every {args.crash_every:g} s); a reading every"
        f" {args.sample_every:g} s",
        file=PROGRESS[0],
        flush=True,
    )
    try:
        with own_server(None, SERVER_CONFIG) as server:
            result = asyncio.run(soak(server, args))
    except TimeoutError:  # before OSError, of which it is a subclass
        print(f"soak: the rooms did not finish within {DRAIN_DEADLINE:.0f} s of the end", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=2))
    else:
        print_report(info, args, result)
    failed = result["ledger"]["jobs_lost"] or result["ledger"]["double_runs"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
