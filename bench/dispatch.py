"""Benchmark agent dispatch end to end: Twirp CreateDispatch in, the worker protocol on `/agent` out.

The workers are lightweight protocol-level clients in this process (WebSockets on asyncio transports,
bench/wire.py, speaking binary `livekit.agent` protobuf, not livekit-agents): they register under one agent
name, report WS_AVAILABLE, accept every AvailabilityRequest and, once assigned, report the job RUNNING then
SUCCESS at once. The timed CreateDispatch calls go over keep-alive connections of the same kind.
Each dispatch goes to a fresh room, as a real call does; creating the room also adds its implicit automatic
dispatch, whose job stays pending (no automatic workers are connected), as it would on LiveKit.

Three phases, each checked against a target:

  latency     sequential CreateDispatch → JobAssignment received, with --workers idle workers connected,
              against a floor measured in the same run: a WorkerPing → WorkerPong round trip on one of the
              workers, interleaved with the dispatches. Dispatch takes two round trips (CreateDispatch
              and its offer, then the availability answer and its assignment), so the target is
              p50 ≤ 3 x (2 x floor p50), and p99 ≤ 20 ms.
  throughput  concurrent CreateDispatch for --duration seconds; assigned dispatches/s on one server core,
              target ≥ 1000/s. Afterwards every dispatch must have reached a worker or have failed with a
              reason (ListDispatch is asked about any that did not): none may be lost.
  idle        a fresh server with --idle-workers connected and silent (no client heartbeats, server pings
              every 60 s): server RSS per worker (≤ 20 KB) and CPU (< 2 %) over a 10 s window.

A fourth phase, `observed`, prices what watching the server costs: the latency and throughput phases
(fewer dispatches and seconds: --observed-dispatches, --observed-duration) on a plain server and on one
with webhooks and Prometheus metrics on, --observed-rounds times, the order alternating from round to round
so that a drift of the machine weighs on both; each server is warmed by the latency phase's first
dispatches, and its throughput phase follows its latency phase. The webhooks go to a receiver in a process
of its own, answering at once, so that this process's busy loop does not pace delivery: on a CPU of its
own if there is a third, else on the server's at SCHED_IDLE (nice 19 is not enough: the scheduler lets a
running process finish its slice before a woken one runs). There, what it costs the machine is counted
against the server, the side measured; on the load generator's CPU it slowed the instrument that takes the
timings instead (with aiohttp's web server as the receiver, dispatch p50 +22 % there against +10 % on the
server's CPU, one run each).
Target: the observed server ≤ 10 % slower (dispatch p50 and assigned dispatches/s, the median of the
rounds' ratios); each round also prints the server's CPU per dispatch, which other load moves least.

Another phase, `dashboard`, prices watching it live: with --dashboard-rooms rooms open (100), the
dashboard logged in in headless Chromium (the tests' own scenario, tests/node/dashboard_scenario.mjs),
a new room is created and the page says how long after the server's event it showed it;
--dashboard-rounds times (5), each with a fresh page. No target: the figure is printed.

It starts its own servers pinned to one CPU and drives them from another, like bench/api.py; the exit code
is 1 when a request failed, a worker lost its connection or a dispatch was lost, else 0 (a MISS is not an
error).

    .venv/bin/python bench/dispatch.py [--workers N] [--idle-workers N] [--dispatches N] [--duration S]
                                       [--phases latency,throughput,idle,queue,observed,dashboard] [--json]
"""

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import aiohttp
from google.protobuf.message import DecodeError
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as pb

from common import (
    BENCH_API_KEY,
    TIMES,
    Call,
    CpuSample,
    Server,
    choose_cpus,
    diagnose,
    free_port,
    machine,
    own_server,
    percent,
    percentile,
    process_cpu_seconds,
    process_rss_kib,
    raise_fd_limit,
    send,
    twirp_call,
    verdict,
)
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from wire import TwirpCaller, WebSocket

# The dashboard phase drives the page with the tests' own browser scenario.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.dashboard_browser import dashboard_scenario, observations

AGENT_NAME = "bench"
PHASES = ("latency", "throughput", "idle", "queue", "observed", "dashboard")
WORKER_VERSION = "bench"
STATUS_INTERVAL = 2.5  # livekit-agents sends update_worker this often
STATUS_STEP = 0.05  # the workers' status reports are spread over steps this long
IDLE_PING_INTERVAL = 60.0  # agents.ping_interval for the idle phase, so that server pings do not dominate
IDLE_WINDOW = 10.0
IDLE_BASELINE = 3.0  # seconds of server CPU measured before any worker connects
IDLE_SETTLE = 2.0
IDLE_WARMUP = 10
CONNECT_CONCURRENCY = 100
CLOSE_CONCURRENCY = 200
CLOSE_TIMEOUT = 5.0  # a worker's close handshake; then its connection is dropped
REGISTER_DEADLINE = 10.0
PING_DEADLINE = 5.0
ASSIGN_DEADLINE = 10.0  # the server's availability timeout is 5 s: an assignment later than this is lost
DRAIN_DEADLINE = 15.0
LATENCY_WARMUP = 20
PREMINT_RATE = 3000  # throughput tokens minted ahead per second of --duration; more are minted on the fly
LIST_CONCURRENCY = 16
MAX_SAMPLES = 5
FD_HEADROOM = 512

TARGET_LATENCY_RATIO = 3.0
TARGET_P99_MS = 20.0
TARGET_RATE = 1000.0
TARGET_IDLE_KB = 20.0
TARGET_IDLE_CPU = 0.02
TARGET_OBSERVED_SLOWDOWN = 0.10


# ---------------------------------------------------------------------------------------------- messages


def _worker_message(**variant: Any) -> bytes:
    return agent.WorkerMessage(**variant).SerializeToString()


REGISTER = _worker_message(
    register=agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name=AGENT_NAME, version=WORKER_VERSION)
)
AVAILABLE = _worker_message(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE))


def accept(job_id: str) -> bytes:
    """The answer livekit-agents' default handler gives: available, identity agent-<job id>."""
    return _worker_message(
        availability=agent.AvailabilityResponse(
            job_id=job_id,
            available=True,
            participant_identity=f"agent-{job_id}",
            participant_attributes={"lk.agent.name": AGENT_NAME},
        )
    )


def job_update(job_id: str, status: int) -> bytes:
    return _worker_message(update_job=agent.UpdateJobStatus(job_id=job_id, status=status))


def worker_token(server: Server) -> str:
    return mint_token(server.api_key, server.api_secret, video=VideoGrant(agent=True), ttl=3600)


def create_call(server: Server, room: str) -> Call:
    request = pb.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room, metadata='{"bench": true}')
    return twirp_call(server, "CreateDispatch", request, room)


def list_call(server: Server, room: str) -> Call:
    return twirp_call(server, "ListDispatch", pb.ListAgentDispatchRequest(room=room), room)


# ---------------------------------------------------------------------------------------------- workers


@dataclass
class Board:
    """What the workers saw, by room name (each dispatch has a fresh room), and what went wrong."""

    complete_jobs: bool = True  # report RUNNING then SUCCESS as soon as a job is assigned
    offers: dict[str, float] = field(default_factory=dict)  # AvailabilityRequest received
    answers: dict[str, float] = field(default_factory=dict)  # AvailabilityResponse sent
    assigned: dict[str, float] = field(default_factory=dict)  # JobAssignment received
    assigned_dispatch: dict[str, str] = field(default_factory=dict)
    assigned_worker: dict[str, str] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    outstanding: set[str] | None = None  # rooms still awaited; all_assigned is set when none is left
    all_assigned: asyncio.Event | None = None
    terminations: int = 0
    lost_connections: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < MAX_SAMPLES and what not in self.samples:
            self.samples.append(what)

    def expect(self, room: str) -> asyncio.Future[float]:
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[room] = waiter
        return waiter

    def assignment(self, room: str, dispatch_id: str, at: float) -> None:
        if room in self.assigned:
            self.fail(f"room {room}: a second JobAssignment")
        self.assigned[room] = at
        self.assigned_dispatch[room] = dispatch_id
        waiter = self.waiters.pop(room, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)
        if self.outstanding is not None and self.all_assigned is not None:
            self.outstanding.discard(room)
            if not self.outstanding:
                self.all_assigned.set()


class BenchWorker:
    """One registered worker, answering the server as a livekit-agents worker would, from the callbacks of
    its WebSocket (bench/wire.py: the load generator spends what the servers do not)."""

    def __init__(self, socket: WebSocket, worker_id: str, board: Board) -> None:
        self.socket = socket
        self.worker_id = worker_id
        self.board = board
        self.pong: asyncio.Future[float] | None = None
        socket.on_message = self.received
        socket.on_lost = self.lost

    def received(self, data: bytes) -> None:
        board, now = self.board, time.perf_counter()
        try:
            message = agent.ServerMessage.FromString(data)
        except DecodeError as exc:
            board.fail(f"worker {self.worker_id}: {exc!r}")
            return
        kind = message.WhichOneof("message")
        if kind == "availability":
            job = message.availability.job
            board.offers[job.room.name] = now
            self.socket.send(accept(job.id))
            board.answers[job.room.name] = time.perf_counter()
        elif kind == "assignment":
            job = message.assignment.job
            board.assigned_worker[job.room.name] = self.worker_id
            board.assignment(job.room.name, job.dispatch_id, now)
            if board.complete_jobs:
                self.socket.send(job_update(job.id, agent.JS_RUNNING), job_update(job.id, agent.JS_SUCCESS))
        elif kind == "pong":
            if self.pong is not None and not self.pong.done():
                self.pong.set_result(now)
        elif kind == "termination":
            board.terminations += 1
        else:
            board.fail(f"worker {self.worker_id}: unexpected ServerMessage {kind}")

    def lost(self, exc: Exception) -> None:
        self.board.fail(f"worker {self.worker_id}: {exc!r}")
        self.board.lost_connections += 1

    async def ping(self) -> float:
        """One WorkerPing → WorkerPong round trip, in seconds."""
        self.pong = asyncio.get_running_loop().create_future()
        ping = _worker_message(ping=agent.WorkerPing(timestamp=int(time.time() * 1000)))
        started = time.perf_counter()
        self.socket.send(ping)
        return await asyncio.wait_for(self.pong, PING_DEADLINE) - started

    async def close(self) -> None:
        await self.socket.close(CLOSE_TIMEOUT)


async def connect_worker(url: str, token: str, board: Board) -> BenchWorker:
    """A registered worker; its messages until it is, and its connection's loss meanwhile, are queued."""
    queued: asyncio.Queue[bytes | Exception] = asyncio.Queue()
    socket = await WebSocket.connect(f"{url}/agent", {"Authorization": f"Bearer {token}"}, queued.put_nowait)
    socket.on_lost = queued.put_nowait

    def next_message(item: bytes | Exception) -> bytes:
        if isinstance(item, Exception):
            raise item
        return item

    try:
        socket.send(REGISTER)
        first = next_message(await asyncio.wait_for(queued.get(), REGISTER_DEADLINE))
        reply = agent.ServerMessage.FromString(first)
        if reply.WhichOneof("message") != "register":
            raise RuntimeError(f"expected a register response first, got {reply.WhichOneof('message')}")
        worker = BenchWorker(socket, reply.register.worker_id, board)
        while not queued.empty():  # an offer may come right behind the register response
            worker.received(next_message(queued.get_nowait()))
    except BaseException:
        await socket.close(CLOSE_TIMEOUT)
        raise
    socket.send(AVAILABLE)
    return worker


async def connect_workers(server: Server, count: int, board: Board) -> list[BenchWorker]:
    """`count` registered workers, connected a bounded number at a time (the accept queue is finite)."""
    token = worker_token(server)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> BenchWorker:
        async with gate:
            return await connect_worker(server.url, token, board)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    workers = [result for result in results if isinstance(result, BenchWorker)]
    failures = [result for result in results if not isinstance(result, BenchWorker)]
    if failures:
        await close_workers(workers)
        raise RuntimeError(
            f"{len(failures)} of {count} workers could not connect; the first: {failures[0]!r}"
        )
    return workers


async def close_workers(workers: Sequence[BenchWorker]) -> None:
    gate = asyncio.Semaphore(CLOSE_CONCURRENCY)

    async def one(worker: BenchWorker) -> None:
        async with gate:
            await worker.close()

    await asyncio.gather(*(one(worker) for worker in workers))


def status_reports_per_step(workers: int, interval: float) -> int:
    """How many workers report their status every STATUS_STEP, so that each does once per `interval`."""
    return max(1, round(workers * STATUS_STEP / interval))


async def report_status(workers: Sequence[BenchWorker], interval: float) -> None:
    """update_worker WS_AVAILABLE from every worker once per `interval`, spread evenly, as livekit-agents
    workers send it (they would otherwise look ever more loaded as jobs are assigned to them)."""
    per_step = status_reports_per_step(len(workers), interval)
    cycle = itertools.cycle(workers)
    while True:
        await asyncio.sleep(STATUS_STEP)
        for _ in range(per_step):
            next(cycle).socket.send(AVAILABLE)


# ---------------------------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Spread:
    samples: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Spread":
        ordered = sorted(seconds)
        return cls(len(ordered), percentile(ordered, 0.50) * 1000, percentile(ordered, 0.99) * 1000)


@dataclass(frozen=True)
class Cpu:
    server: float | None
    client: float
    other: float | None

    @classmethod
    def since(cls, before: CpuSample, seconds: float, server_pid: int | None) -> "Cpu":
        client, server, other = CpuSample.take(server_pid).usage_since(before, seconds)
        return cls(server, client, other)


@dataclass(frozen=True)
class LatencyResult:
    workers: int
    floor: Spread  # WorkerPing → WorkerPong
    http_floor: Spread  # GET / round trip, for reference: the HTTP part of CreateDispatch costs at least this
    dispatch: Spread  # CreateDispatch sent → JobAssignment received
    to_offer: Spread  # CreateDispatch sent → AvailabilityRequest received
    worker_turnaround: Spread  # AvailabilityRequest received → AvailabilityResponse sent (client side)
    answer_to_assignment: Spread  # AvailabilityResponse sent → JobAssignment received
    reply: Spread  # CreateDispatch sent → its HTTP response read
    cpu: Cpu
    errors: int


@dataclass(frozen=True)
class ThroughputResult:
    workers: int
    concurrency: int
    seconds: float
    created: int
    assigned: int
    failed_with_reason: int
    lost: int
    http_errors: int
    created_rate: float
    assigned_rate: float  # assignments / (last assignment - start)
    slowest_second: int | None  # fewest assignments in one whole second of the run
    dispatch: Spread  # CreateDispatch sent → JobAssignment received, under load
    reply: Spread  # CreateDispatch HTTP round trip, under load
    tokens_minted_in_loop: int
    cpu: Cpu
    errors: int


@dataclass(frozen=True)
class QueueRun:
    workers: int
    seconds: float
    """From the first worker's connection to the last job's assignment."""
    floor_seconds: float
    """The workers' own pace: each job costs a worker one offer → answer round trip (one question at a
    time), so `jobs * round trip / workers`, with the round trip measured by WorkerPing."""
    round_trip: Spread
    per_worker: list[int]
    errors: int


@dataclass(frozen=True)
class QueueResult:
    jobs: int
    runs: list[QueueRun]


@dataclass(frozen=True)
class IdleResult:
    workers: int
    connect_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    kib_per_worker: float
    baseline_cpu: float  # server CPU with no worker connected
    cpu: Cpu
    ping_interval: float
    errors: int


async def latency_phase(
    server: Server, workers: Sequence[BenchWorker], board: Board, count: int
) -> LatencyResult:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-lat"
    rooms = [f"{prefix}-{i}" for i in range(LATENCY_WARMUP + count)]
    calls = [create_call(server, room) for room in rooms]  # minted outside the timed loop
    clock = time.perf_counter
    pings: list[float] = []
    gets: list[float] = []
    health = Call("GET", f"{server.url}/")
    sent: dict[str, float] = {}
    replies: dict[str, float] = {}
    errors_before = board.errors
    caller = TwirpCaller(server.url)  # the calls' client costs what the workers' does (bench/wire.py)
    before, started = CpuSample.take(server.pid), clock()
    try:
        for index, (room, call) in enumerate(zip(rooms, calls, strict=True)):
            if index == LATENCY_WARMUP:
                sent.clear()
                replies.clear()
                pings.clear()
                gets.clear()
                before, started = CpuSample.take(server.pid), clock()
            try:
                pings.append(await workers[index % len(workers)].ping())
            except TimeoutError:
                board.fail(f"no WorkerPong within {PING_DEADLINE:g}s")
            t0 = clock()
            try:
                status, _ = await caller.send(health)
            except OSError as exc:  # wire.ProtocolError and TimeoutError too
                board.fail(f"GET /: {exc!r}")
            else:
                gets.append(clock() - t0)
                if status != 200:
                    board.fail(f"GET /: HTTP {status}")
            waiter = board.expect(room)
            sent[room] = t0 = clock()
            try:
                status, body = await caller.send(call)
            except OSError as exc:  # wire.ProtocolError and TimeoutError too
                board.fail(f"CreateDispatch {room}: {exc!r}")
                continue
            replies[room] = clock() - t0
            if status != 200:
                board.fail(f"CreateDispatch {room}: HTTP {status} {body[:200]!r}")
                continue
            try:
                await asyncio.wait_for(waiter, ASSIGN_DEADLINE)
            except TimeoutError:
                board.fail(f"room {room}: no JobAssignment within {ASSIGN_DEADLINE:g}s")
    finally:
        caller.close()
    cpu = Cpu.since(before, clock() - started, server.pid)
    done = [room for room in sent if room in board.assigned and room in board.answers]
    return LatencyResult(
        workers=len(workers),
        floor=Spread.of(pings),
        http_floor=Spread.of(gets),
        dispatch=Spread.of([board.assigned[room] - sent[room] for room in done]),
        to_offer=Spread.of([board.offers[room] - sent[room] for room in done]),
        worker_turnaround=Spread.of([board.answers[room] - board.offers[room] for room in done]),
        answer_to_assignment=Spread.of([board.assigned[room] - board.answers[room] for room in done]),
        reply=Spread.of(list(replies.values())),
        cpu=cpu,
        errors=board.errors - errors_before,
    )


def throughput_calls(
    server: Server, prefix: str, premint: int
) -> tuple[Iterator[tuple[str, Call]], list[int]]:
    """Fresh rooms with their CreateDispatch calls: `premint` minted now, any more in the timed loop
    (counted, since minting then costs the load generator CPU)."""
    ready = [(f"{prefix}-{i}", create_call(server, f"{prefix}-{i}")) for i in range(premint)]
    minted_late = [0]

    def generate() -> Iterator[tuple[str, Call]]:
        yield from ready
        for i in itertools.count(premint):
            minted_late[0] += 1
            yield f"{prefix}-{i}", create_call(server, f"{prefix}-{i}")

    return generate(), minted_late


async def list_dispatch_states(
    session: aiohttp.ClientSession, server: Server, rooms: dict[str, str], board: Board
) -> tuple[int, list[str]]:
    """For dispatches no worker saw: how many ended failed with a reason, and descriptions of the rest."""
    gate = asyncio.Semaphore(LIST_CONCURRENCY)
    failed, lost = 0, []

    async def one(room: str, dispatch_id: str) -> None:
        nonlocal failed
        async with gate:
            try:
                status, body = await send(session, list_call(server, room))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                board.fail(f"ListDispatch {room}: {exc!r}")
                lost.append(f"{room}: ListDispatch failed")
                return
        if status != 200:
            board.fail(f"ListDispatch {room}: HTTP {status} {body[:200]!r}")
            lost.append(f"{room}: ListDispatch HTTP {status}")
            return
        listed = pb.ListAgentDispatchResponse.FromString(body).agent_dispatches
        ours = [dispatch for dispatch in listed if dispatch.id == dispatch_id]
        jobs = list(ours[0].state.jobs) if ours else []
        if jobs and all(job.state.status == agent.JS_FAILED and job.state.error for job in jobs):
            failed += 1
            return
        states = ", ".join(f"{agent.JobStatus.Name(job.state.status)} {job.state.error!r}" for job in jobs)
        lost.append(f"{room} {dispatch_id}: " + (states or "no job" if ours else "dispatch not listed"))

    await asyncio.gather(*(one(room, dispatch_id) for room, dispatch_id in rooms.items()))
    return failed, lost


@dataclass
class CallLog:
    """What a throughput run's callers sent and were answered, by room (each call has a fresh room)."""

    started: float  # perf_counter seconds, as the workers' times
    seconds: float = 0.0  # the timed span
    sent: dict[str, float] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)  # room → dispatch id
    replies: list[float] = field(default_factory=list)
    http_errors: int = 0


async def throughput_phase(
    session: aiohttp.ClientSession,
    server: Server,
    workers: Sequence[BenchWorker],
    board: Board,
    duration: float,
    concurrency: int,
) -> tuple[ThroughputResult, list[str]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-tput"
    source, minted_late = throughput_calls(server, prefix, math.ceil(duration * PREMINT_RATE))
    clock = time.perf_counter
    errors_before = board.errors

    async def driver(deadline: float) -> None:
        caller = TwirpCaller(server.url)
        try:
            while clock() < deadline:
                room, call = next(source)
                log.sent[room] = t0 = clock()
                try:
                    status, body = await caller.send(call)
                except OSError as exc:  # wire.ProtocolError and TimeoutError too
                    log.http_errors += 1
                    board.fail(f"CreateDispatch {room}: {exc!r}")
                    continue
                log.replies.append(clock() - t0)
                if status != 200:
                    log.http_errors += 1
                    board.fail(f"CreateDispatch {room}: HTTP {status} {body[:200]!r}")
                    continue
                log.created[room] = pb.AgentDispatch.FromString(body).id
        finally:
            caller.close()

    before, started = CpuSample.take(server.pid), clock()
    log = CallLog(started)
    await asyncio.gather(*(driver(started + duration) for _ in range(concurrency)))
    log.seconds = clock() - started
    cpu = Cpu.since(before, log.seconds, server.pid)

    outstanding = {room for room in log.created if room not in board.assigned}
    if outstanding:
        board.outstanding, board.all_assigned = outstanding, asyncio.Event()
        with suppress(TimeoutError):
            await asyncio.wait_for(board.all_assigned.wait(), DRAIN_DEADLINE)
        board.outstanding = None
    return await throughput_outcome(
        session, server, board, log, len(workers), concurrency, cpu, minted_late[0], errors_before
    )


async def throughput_outcome(
    session: aiohttp.ClientSession,
    server: Server,
    board: Board,
    log: CallLog,
    workers: int,
    concurrency: int,
    cpu: Cpu,
    minted_late: int,
    errors_before: int,
) -> tuple[ThroughputResult, list[str]]:
    """The figures of a throughput run against `server`, once its workers saw what they were going to:
    ListDispatch is asked about every created dispatch that no worker was assigned."""
    created, started, seconds = log.created, log.started, log.seconds
    missing = {room: dispatch_id for room, dispatch_id in created.items() if room not in board.assigned}
    failed, lost = await list_dispatch_states(session, server, missing, board)
    for room, dispatch_id in created.items():
        seen = board.assigned_dispatch.get(room)
        if seen is not None and seen != dispatch_id:
            board.fail(f"room {room}: assignment for dispatch {seen}, created {dispatch_id}")

    times = [board.assigned[room] for room in created if room in board.assigned]
    last = max(times, default=started)
    per_second = Counter(int(t - started) for t in times if t - started < int(seconds))
    whole_seconds = range(int(seconds))
    dispatch = [board.assigned[room] - log.sent[room] for room in created if room in board.assigned]
    result = ThroughputResult(
        workers=workers,
        concurrency=concurrency,
        seconds=seconds,
        created=len(created),
        assigned=len(times),
        failed_with_reason=failed,
        lost=len(lost),
        http_errors=log.http_errors,
        created_rate=len(created) / seconds,
        assigned_rate=len(times) / (last - started) if times else 0.0,
        slowest_second=min((per_second[s] for s in whole_seconds), default=None),
        dispatch=Spread.of(dispatch),
        reply=Spread.of(log.replies),
        tokens_minted_in_loop=minted_late,
        cpu=cpu,
        errors=board.errors - errors_before,
    )
    return result, lost[:MAX_SAMPLES]


async def idle_phase(server: Server, count: int) -> tuple[IdleResult, list[str]]:
    assert server.pid is not None
    board = Board()
    # A few workers first, so that code paths warmed by the first connections are not charged to the rest.
    await close_workers(await connect_workers(server, IDLE_WARMUP, board))
    cpu_before = process_cpu_seconds(server.pid)
    await asyncio.sleep(IDLE_BASELINE)
    baseline_cpu = (process_cpu_seconds(server.pid) - cpu_before) / IDLE_BASELINE
    rss_before = process_rss_kib(server.pid)

    started = time.perf_counter()
    workers = await connect_workers(server, count, board)
    connect_seconds = time.perf_counter() - started
    try:
        await asyncio.sleep(IDLE_SETTLE)
        before = CpuSample.take(server.pid)
        await asyncio.sleep(IDLE_WINDOW)
        cpu = Cpu.since(before, IDLE_WINDOW, server.pid)
        rss_after = process_rss_kib(server.pid)
        if board.lost_connections:
            board.fail(f"{board.lost_connections} idle workers lost their connection")
    finally:
        await close_workers(workers)
    result = IdleResult(
        workers=count,
        connect_seconds=connect_seconds,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        kib_per_worker=(rss_after - rss_before) / count,
        baseline_cpu=baseline_cpu,
        cpu=cpu,
        ping_interval=IDLE_PING_INTERVAL,
        errors=board.errors,
    )
    return result, board.samples


# ---------------------------------------------------------------------------------------------- run


async def queue_phase(server: Server, jobs: int, worker_counts: Sequence[int]) -> QueueResult:
    """`jobs` dispatches wait for an agent with no worker; then workers connect (and report their status as
    livekit-agents does): how long until every job is assigned, against the workers' own pace."""
    runs = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=LIST_CONCURRENCY)) as twirp:
        for count in worker_counts:
            board = Board()
            prefix = f"bench-{uuid.uuid4().hex[:8]}-queue"
            rooms = [f"{prefix}-{i}" for i in range(jobs)]
            gate = asyncio.Semaphore(LIST_CONCURRENCY)

            async def create(room: str, board: Board = board, gate: asyncio.Semaphore = gate) -> None:
                async with gate:
                    status, body = await send(twirp, create_call(server, room))
                if status != 200:
                    board.fail(f"CreateDispatch {room}: HTTP {status} {body[:200]!r}")

            await asyncio.gather(*(create(room) for room in rooms))
            board.outstanding, board.all_assigned = set(rooms), asyncio.Event()
            started = time.perf_counter()
            workers = await connect_workers(server, count, board)
            pump = asyncio.create_task(report_status(workers, STATUS_INTERVAL))
            try:
                await asyncio.wait_for(board.all_assigned.wait(), DRAIN_DEADLINE * 4)
            except TimeoutError:
                board.fail(f"{len(board.outstanding)} of {jobs} queued jobs not assigned in time")
            seconds = time.perf_counter() - started
            pump.cancel()
            with suppress(asyncio.CancelledError):
                await pump
            pings = []
            for _ in range(50):
                with suppress(TimeoutError):
                    pings.append(await workers[0].ping())
            round_trip = Spread.of(pings)
            per_worker = [0] * count
            by_id = {worker.worker_id: index for index, worker in enumerate(workers)}
            for room in board.assigned:
                per_worker[by_id.get(board.assigned_worker.get(room, ""), 0)] += 1
            await close_workers(workers)
            floor = jobs * round_trip.p50_ms / 1000 / count
            runs.append(QueueRun(count, seconds, floor, round_trip, per_worker, board.errors))
    return QueueResult(jobs, runs)


@dataclass(frozen=True)
class Deliveries:
    """What the webhook receiver got from the observed server."""

    by_end: int
    """Deliveries received when the run's phases were over."""
    total: int
    """Deliveries received once they stopped coming (delivery goes on after the phase)."""
    told_dropped: int
    """The drops the server told of, summed over the deliveries' `numDropped` (its queue was full)."""


@dataclass(frozen=True)
class ObservedRound:
    plain_first: bool
    plain_latency: LatencyResult
    plain_throughput: ThroughputResult
    observed_latency: LatencyResult
    observed_throughput: ThroughputResult
    webhooks: Deliveries
    metrics_bytes: int
    """Size of one /metrics scrape at the end of the observed run: the metrics were on."""

    @property
    def latency_ratio(self) -> float:
        """Observed dispatch p50 over plain (> 1: slower)."""
        return self.observed_latency.dispatch.p50_ms / self.plain_latency.dispatch.p50_ms

    @property
    def throughput_ratio(self) -> float:
        """Plain assigned dispatches/s over observed (> 1: slower)."""
        return self.plain_throughput.assigned_rate / self.observed_throughput.assigned_rate

    @property
    def cpu_ratio(self) -> float | None:
        """Server CPU per assigned dispatch in the throughput phase, observed over plain: what watching
        costs the server's core, less moved by other load on the machine than the rates are."""
        plain, observed = cpu_per_dispatch(self.plain_throughput), cpu_per_dispatch(self.observed_throughput)
        return None if plain is None or observed is None else observed / plain


def cpu_per_dispatch(run: ThroughputResult) -> float | None:
    """Seconds of server CPU per assigned dispatch over the throughput phase."""
    if run.cpu.server is None or not run.assigned:
        return None
    return run.cpu.server * run.seconds / run.assigned


@dataclass(frozen=True)
class ObservedResult:
    rounds: list[ObservedRound]
    receiver: str
    """Where the webhook receiver ran."""

    @property
    def latency_ratio(self) -> float:
        """The median round's observed dispatch p50 over plain: one disturbed round does not decide it."""
        return statistics.median(r.latency_ratio for r in self.rounds)

    @property
    def throughput_ratio(self) -> float:
        """The median round's plain assigned dispatches/s over observed."""
        return statistics.median(r.throughput_ratio for r in self.rounds)


# ---------------------------------------------------------------------------------------------- dashboard


@dataclass(frozen=True)
class DashboardResult:
    rooms_live: int
    latencies_ms: list[float]  # each round: from a new room's event to the page showing it

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 0.5)


@dataclass(frozen=True)
class DashboardSite:
    """A bench server as the browser scenario sees it (tests/dashboard_browser.Site)."""

    http_url: str
    api_key: str
    api_secret: str

    def log(self) -> str:
        return "(the bench's server logs warnings only)"


async def change_rooms(session: aiohttp.ClientSession, server: Server, method: str, names: list[str]) -> None:
    """CreateRoom or DeleteRoom (Twirp JSON, a roomCreate token) for each of `names`, in turn."""
    token = mint_token(server.api_key, server.api_secret, video=VideoGrant(room_create=True), ttl=600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for name in names:
        url = f"{server.url}/twirp/livekit.RoomService/{method}"
        body = {"name": name} if method == "CreateRoom" else {"room": name}
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{method} {name}: HTTP {response.status} {await response.text()}")


async def dashboard_phase(server: Server, rooms: int, rounds: int) -> DashboardResult:
    """With `rooms` rooms live, `rounds` times: the page (headless Chromium, logged in) open, a room is
    created, and the page says when it showed it; the room is then deleted."""
    site = DashboardSite(server.url, server.api_key, server.api_secret)
    latencies = []
    async with aiohttp.ClientSession() as session:
        await change_rooms(session, server, "CreateRoom", [f"live-{i}" for i in range(rooms)])
        for round_ in range(rounds):
            name = f"one-more-{round_}"
            async with dashboard_scenario(site, "many-rooms", {"ROOM": name}) as browser:
                await change_rooms(session, server, "CreateRoom", [name])
                result = await observations(site, browser)
            await change_rooms(session, server, "DeleteRoom", [name])
            if result["roomsShown"] != rooms + 1:
                raise RuntimeError(f"the page showed {result['roomsShown']} rooms, not {rooms + 1}")
            latencies.append(float(result["latencyMs"]["roomStarted"]))
    return DashboardResult(rooms, latencies)


@dataclass
class Outcome:
    queue: QueueResult | None = None
    latency: LatencyResult | None = None
    throughput: ThroughputResult | None = None
    idle: IdleResult | None = None
    observed: ObservedResult | None = None
    dashboard: DashboardResult | None = None
    samples: list[str] = field(default_factory=list)
    lost_samples: list[str] = field(default_factory=list)
    errors: int = 0


async def busy_phases(server: Server, args: argparse.Namespace, outcome: Outcome) -> None:
    board = Board()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as twirp:
        workers = await connect_workers(server, args.workers, board)
        pump = None
        if args.status_interval:
            pump = asyncio.create_task(report_status(workers, args.status_interval))
        try:
            if "latency" in args.phases:
                outcome.latency = await latency_phase(server, workers, board, args.dispatches)
            if "throughput" in args.phases:
                outcome.throughput, outcome.lost_samples = await throughput_phase(
                    twirp, server, workers, board, args.duration, args.concurrency
                )
        finally:
            if pump is not None:
                pump.cancel()
                with suppress(asyncio.CancelledError):
                    await pump
            if board.lost_connections:
                board.fail(f"{board.lost_connections} workers lost their connection during the run")
            await close_workers(workers)
    outcome.samples += board.samples
    outcome.errors += board.errors


async def idle_phases(server: Server, args: argparse.Namespace, outcome: Outcome) -> None:
    outcome.idle, samples = await idle_phase(server, args.idle_workers)
    outcome.samples += samples
    outcome.errors += outcome.idle.errors


RECEIVER_START = 20.0
DELIVERY_SETTLE = 1.0  # the receiver's count unchanged this long: the server's delivery is done
DELIVERY_DEADLINE = 30.0


@dataclass(frozen=True)
class ReceiverPlace:
    """Where the webhook receiver runs: a CPU of its own when the machine has a third, else the server's at
    the lowest priority, so that it answers in the server's idle time, and what it costs the machine weighs
    on the side measured rather than on the timings (a receiver elsewhere on a network would cost this
    machine nothing)."""

    cpu: int | None
    lowest_priority: bool

    @classmethod
    def beside(cls, server_cpu: int, client_cpu: int | None) -> "ReceiverPlace":
        spare = sorted(set(range(os.cpu_count() or 1)) - {server_cpu, client_cpu})
        return cls(spare[0], False) if spare else cls(server_cpu, True)

    def describe(self) -> str:
        where = "unpinned" if self.cpu is None else f"on CPU {self.cpu}"
        return f"{where}, SCHED_IDLE (sharing the server's CPU)" if self.lowest_priority else where


class WebhookReceiver(asyncio.Protocol):
    """One connection of the receiver: each request answered 200 at once, counted with the drops it tells
    of (`numDropped`). The requests are read as the server writes them (HTTP/1.1 with a Content-Length) and
    no further: a web framework's routing and request objects add their own cost to the shared machine,
    measured as the server's (aiohttp's web server: dispatch p50 +10 %, against +6 % with this, one run
    each)."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1").lower().split("\r\n")
            lengths = [line.partition(":")[2] for line in head[1:] if line.startswith("content-length:")]
            if not head[0].startswith("post ") or len(lengths) != 1:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                self.transport.close()
                return
            body_end = end + 4 + int(lengths[0])
            if len(self.buffer) < body_end:
                return
            event = json.loads(self.buffer[end + 4 : body_end])
            self.buffer = self.buffer[body_end:]
            self.counts["delivered"] += 1
            self.counts["dropped"] += int(event.get("numDropped", 0))
            self.transport.write(self.ANSWER)


def receive_webhooks(port: int, place: ReceiverPlace, control: Connection) -> None:
    """The webhook receiver, run in a process of its own (`WebhookReceiver` on `port`); asked "count" on
    `control`, it sends the counts; "stop" ends it."""
    if place.cpu is not None:
        os.sched_setaffinity(0, {place.cpu})
    if place.lowest_priority:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    counts = {"delivered": 0, "dropped": 0}

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: WebhookReceiver(counts), "127.0.0.1", port)
        stopped = asyncio.Event()

        def asked() -> None:
            if control.recv() == "count":
                control.send(dict(counts))
            else:
                stopped.set()

        loop.add_reader(control.fileno(), asked)
        control.send("ready")
        await stopped.wait()
        server.close()

    run_async(serve())


@contextmanager
def webhook_receiver(port: int, place: ReceiverPlace) -> Iterator[Connection]:
    """The receiver's process, started and always stopped; yields the connection to ask it for counts."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this one's loop
    control, child_end = context.Pipe()
    process = context.Process(target=receive_webhooks, args=(port, place, child_end), daemon=True)
    process.start()
    try:
        if not control.poll(RECEIVER_START):
            raise RuntimeError(f"the webhook receiver did not start within {RECEIVER_START:g}s")
        control.recv()
        yield control
    finally:
        with suppress(OSError):
            control.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


def delivery_counts(control: Connection) -> dict[str, int]:
    control.send("count")
    counts: dict[str, int] = control.recv()
    return counts


async def settled_deliveries(control: Connection, by_end: int) -> Deliveries:
    """Wait (up to DELIVERY_DEADLINE) until the server has stopped delivering, then count."""
    counts = delivery_counts(control)
    deadline = time.perf_counter() + DELIVERY_DEADLINE
    while time.perf_counter() < deadline:
        await asyncio.sleep(DELIVERY_SETTLE)
        latest = delivery_counts(control)
        if latest == counts:
            break
        counts = latest
    return Deliveries(by_end, counts["delivered"], counts["dropped"])


async def observed_run(
    server: Server, args: argparse.Namespace, receiver: Connection | None, metrics_port: int | None
) -> tuple[Outcome, Deliveries | None, int]:
    """The latency and throughput phases; with a receiver, its deliveries, and with metrics, the size of
    a /metrics scrape."""
    outcome = Outcome()
    phase_args = argparse.Namespace(
        **{
            **vars(args),
            "phases": ["latency", "throughput"],
            "dispatches": args.observed_dispatches,
            "duration": args.observed_duration,
        }
    )
    await busy_phases(server, phase_args, outcome)
    deliveries = None
    if receiver is not None:
        deliveries = await settled_deliveries(receiver, delivery_counts(receiver)["delivered"])
    scraped = 0
    if metrics_port is not None:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            scraped = len(await response.read())
    return outcome, deliveries, scraped


def observed_phases(
    server_cpu: int, client_cpu: int | None, args: argparse.Namespace, outcome: Outcome, setup: dict[str, Any]
) -> None:
    rounds = []
    place = ReceiverPlace.beside(server_cpu, client_cpu)
    for number in range(args.observed_rounds):
        plain_first = number % 2 == 0
        runs: dict[bool, tuple[Outcome, Deliveries | None, int]] = {}
        for observed in (False, True) if plain_first else (True, False):
            extra: dict[str, Any] = {}
            receiver_port, metrics_port = free_port(), free_port()
            if observed:
                extra = {
                    "webhook": {"api_key": BENCH_API_KEY, "urls": [f"http://127.0.0.1:{receiver_port}/"]},
                    "prometheus_port": metrics_port,
                }
            receiving = webhook_receiver(receiver_port, place) if observed else nullcontext()
            with own_server(server_cpu, extra) as server, receiving as receiver:
                if client_cpu is not None:
                    os.sched_setaffinity(0, {client_cpu})
                    setup["client"] = f"pinned to CPU {client_cpu}"
                setup["server"] = server.pinned
                runs[observed] = run_async(
                    observed_run(server, args, receiver, metrics_port if observed else None)
                )
        (plain, _, _), (watched, deliveries, scraped) = runs[False], runs[True]
        for run_outcome in (plain, watched):
            outcome.samples += run_outcome.samples
            outcome.errors += run_outcome.errors
        assert plain.latency and plain.throughput and watched.latency and watched.throughput and deliveries
        rounds.append(
            ObservedRound(
                plain_first,
                plain.latency,
                plain.throughput,
                watched.latency,
                watched.throughput,
                deliveries,
                scraped,
            )
        )
    outcome.observed = ObservedResult(rounds, place.describe())


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_async(coroutine: Any) -> Any:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def run(args: argparse.Namespace) -> tuple[Outcome, dict[str, Any]]:
    outcome = Outcome()
    server_cpu, client_cpu = choose_cpus()  # once: pinning this process narrows what it can see
    setup: dict[str, Any] = {"client": "sharing the CPU", "open_files": args.open_files}
    if "latency" in args.phases or "throughput" in args.phases:
        with own_server(server_cpu) as server:
            if client_cpu is not None:  # after the server started, so that it does not inherit this
                os.sched_setaffinity(0, {client_cpu})
                setup["client"] = f"pinned to CPU {client_cpu}"
            setup["server"] = server.pinned
            run_async(busy_phases(server, args, outcome))
    if "idle" in args.phases:
        with own_server(server_cpu, {"agents": {"ping_interval": IDLE_PING_INTERVAL}}) as server:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
                setup["client"] = f"pinned to CPU {client_cpu}"
            setup["server"] = server.pinned
            run_async(idle_phases(server, args, outcome))
    if "queue" in args.phases:
        with own_server(server_cpu) as server:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
                setup["client"] = f"pinned to CPU {client_cpu}"
            setup["server"] = server.pinned
            outcome.queue = run_async(queue_phase(server, args.queued, args.queue_workers))
            outcome.errors += sum(run.errors for run in outcome.queue.runs)
    if "observed" in args.phases:
        observed_phases(server_cpu, client_cpu, args, outcome, setup)
    if "dashboard" in args.phases:
        with own_server(server_cpu) as server:
            setup["server"] = server.pinned
            # The browser is not pinned: it is the page's whole cost, not the load generator's.
            outcome.dashboard = run_async(
                dashboard_phase(server, args.dashboard_rooms, args.dashboard_rounds)
            )
    return outcome, setup


# ---------------------------------------------------------------------------------------------- report


def checks(outcome: Outcome) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if (lat := outcome.latency) is not None:
        two = 2 * lat.floor.p50_ms
        ratio = lat.dispatch.p50_ms / two if two else float("inf")
        found += [
            {
                "name": "latency_p50_ratio",
                "value": ratio,
                "target": TARGET_LATENCY_RATIO,
                "pass": ratio <= TARGET_LATENCY_RATIO,
                "text": f"dispatch p50 = {lat.dispatch.p50_ms:.2f} ms = {ratio:.2f}{TIMES} two floor round "
                f"trips ({two:.2f} ms) (target ≤ {TARGET_LATENCY_RATIO:g}{TIMES})",
            },
            {
                "name": "latency_p99_ms",
                "value": lat.dispatch.p99_ms,
                "target": TARGET_P99_MS,
                "pass": lat.dispatch.p99_ms <= TARGET_P99_MS,
                "text": f"dispatch p99 = {lat.dispatch.p99_ms:.2f} ms (target ≤ {TARGET_P99_MS:g} ms)",
            },
        ]
    if (tput := outcome.throughput) is not None:
        found.append(
            {
                "name": "throughput_rate",
                "value": tput.assigned_rate,
                "target": TARGET_RATE,
                "pass": tput.assigned_rate >= TARGET_RATE,
                "text": f"throughput = {tput.assigned_rate:.0f} dispatches/s assigned on one core "
                f"(target ≥ {TARGET_RATE:g}/s)",
            }
        )
    if (idle := outcome.idle) is not None:
        cpu = idle.cpu.server if idle.cpu.server is not None else float("nan")
        found += [
            {
                "name": "idle_kb_per_worker",
                "value": idle.kib_per_worker,
                "target": TARGET_IDLE_KB,
                "pass": idle.kib_per_worker <= TARGET_IDLE_KB,
                "text": f"idle memory = {idle.kib_per_worker:.1f} KB per worker "
                f"(target ≤ {TARGET_IDLE_KB:g} KB)",
            },
            {
                "name": "idle_cpu",
                "value": cpu,
                "target": TARGET_IDLE_CPU,
                "pass": cpu < TARGET_IDLE_CPU,
                "text": f"idle CPU = {cpu * 100:.2f}% with {idle.workers} workers "
                f"(target < {TARGET_IDLE_CPU * 100:g}%)",
            },
        ]
    if (observed := outcome.observed) is not None:
        for name, ratio, what in (
            ("observed_latency_ratio", observed.latency_ratio, "dispatch p50"),
            ("observed_throughput_ratio", observed.throughput_ratio, "throughput"),
        ):
            limit = 1 + TARGET_OBSERVED_SLOWDOWN
            found.append(
                {
                    "name": name,
                    "value": ratio,
                    "target": limit,
                    "pass": ratio <= limit,
                    "text": f"with webhooks and metrics, {what} is {(ratio - 1) * 100:+.1f}% slower "
                    f"(median ratio {ratio:.3f}; target ≤ {TARGET_OBSERVED_SLOWDOWN * 100:g}% slower)",
                }
            )
    return found


def cpu_text(cpu: Cpu) -> str:
    return f"server {percent(cpu.server)}, client {percent(cpu.client)}, other {percent(cpu.other)}"


def spread_row(name: str, spread: Spread, note: str = "") -> str:
    return f"  {name:<42}{spread.samples:>8}{spread.p50_ms:>10.2f}{spread.p99_ms:>10.2f}  {note}".rstrip()


def note_for(cpu: Cpu) -> str | None:
    return diagnose(cpu.server, cpu.client, cpu.other)


def print_report(
    info: dict[str, Any], setup: dict[str, Any], outcome: Outcome, found: list[dict[str, Any]]
) -> None:
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  python={info['python']}")
    print(
        f"setup:   server {setup.get('server', '-')}, load generator {setup['client']}, "
        f"loop={setup['loop']}, open files limit {setup['open_files']} (the server inherits it)"
    )
    print(
        f"         workers: protocol-level clients in this process (bench/wire.py), agent '{AGENT_NAME}', "
        f"accept at once, report RUNNING then SUCCESS; {setup['status']}"
    )
    header = f"  {'':<42}{'samples':>8}{'p50 ms':>10}{'p99 ms':>10}"
    if (lat := outcome.latency) is not None:
        print()
        print(
            f"latency: sequential CreateDispatch, each to a fresh room, {lat.workers} idle workers connected"
        )
        print(header)
        print(spread_row("floor: WorkerPing → WorkerPong", lat.floor, "(one WebSocket round trip)"))
        print(spread_row("HTTP floor: GET /", lat.http_floor, "(reference: one HTTP round trip)"))
        print(spread_row("CreateDispatch → JobAssignment", lat.dispatch))
        print(spread_row("  CreateDispatch → AvailabilityRequest", lat.to_offer, "(HTTP + engine + offer)"))
        print(spread_row("  AvailabilityRequest → answer (client)", lat.worker_turnaround))
        print(spread_row("  answer → JobAssignment", lat.answer_to_assignment, "(answer + job token + send)"))
        print(spread_row("CreateDispatch HTTP reply", lat.reply))
        print(f"  CPU: {cpu_text(lat.cpu)}")
        if note := note_for(lat.cpu):
            print(f"  note: {note}")
    if (tput := outcome.throughput) is not None:
        print()
        print(
            f"throughput: CreateDispatch from {tput.concurrency} concurrent callers for "
            f"{tput.seconds:.1f} s, each to a fresh room, {tput.workers} workers"
        )
        slowest = "-" if tput.slowest_second is None else f"{tput.slowest_second}"
        print(
            f"  created {tput.created} ({tput.created_rate:.0f}/s), assigned {tput.assigned} "
            f"({tput.assigned_rate:.0f}/s, slowest whole second {slowest}), failed with a reason "
            f"{tput.failed_with_reason}, lost {tput.lost}, HTTP errors {tput.http_errors}"
        )
        print(header)
        print(spread_row("CreateDispatch → JobAssignment", tput.dispatch))
        print(spread_row("CreateDispatch HTTP reply", tput.reply))
        print(f"  CPU: {cpu_text(tput.cpu)}")
        if tput.tokens_minted_in_loop:
            print(f"  note: {tput.tokens_minted_in_loop} request tokens were minted inside the timed loop")
        if note := note_for(tput.cpu):
            print(f"  note: {note}")
    if (idle := outcome.idle) is not None:
        print()
        print(
            f"idle: {idle.workers} workers connected in {idle.connect_seconds:.1f} s, registered and silent "
            f"(no client heartbeat; server pings every {idle.ping_interval:g} s, agents.ping_interval)"
        )
        delta = idle.rss_after_kib - idle.rss_before_kib
        print(
            f"  server RSS {idle.rss_before_kib / 1024:.1f} MB before → {idle.rss_after_kib / 1024:.1f} MB "
            f"after: +{delta / 1024:.1f} MB = {idle.kib_per_worker:.1f} KB per worker "
            f"(before = after {IDLE_WARMUP} warm-up workers came and went)"
        )
        print(
            f"  CPU over {IDLE_WINDOW:g} s: {cpu_text(idle.cpu)} "
            f"(server with no worker: {percent(idle.baseline_cpu)})"
        )
        if note := note_for(idle.cpu):
            print(f"  note: {note}")
    if (queue := outcome.queue) is not None:
        print()
        print(
            f"queue drain: {queue.jobs} dispatches waiting for '{AGENT_NAME}' before any worker connects; "
            "then the workers connect"
        )
        for run in queue.runs:
            print(
                f"  {run.workers} worker(s): all assigned in {run.seconds * 1000:.0f} ms "
                f"({queue.jobs / run.seconds:.0f} jobs/s; per worker {run.per_worker}); floor "
                f"{run.floor_seconds * 1000:.0f} ms = {queue.jobs} jobs * round trip "
                f"{run.round_trip.p50_ms:.2f} ms / {run.workers} "
                "(the workers' own pace: one question at a time)"
            )
    if (observed := outcome.observed) is not None:
        print()
        print(
            "observed: the same latency and throughput runs on a plain server and on one with webhooks and "
            f"Prometheus metrics on, order alternating; the webhook receiver {observed.receiver}"
        )
        for number, r in enumerate(observed.rounds, 1):
            runs = [
                ("plain   ", r.plain_latency, r.plain_throughput),
                ("observed", r.observed_latency, r.observed_throughput),
            ]
            for label, lat, tput in runs if r.plain_first else runs[::-1]:
                cpu = cpu_per_dispatch(tput)
                print(
                    f"  round {number} {label}: dispatch p50 {lat.dispatch.p50_ms:.2f} ms, "
                    f"p99 {lat.dispatch.p99_ms:.2f} ms; {tput.assigned_rate:.0f} dispatches/s assigned, "
                    f"server CPU {percent(tput.cpu.server)} "
                    f"({'?' if cpu is None else f'{cpu * 1e6:.0f}'} us per dispatch), "
                    f"other processes {percent(tput.cpu.other)}"
                )
            w = r.webhooks
            cpu_ratio = "?" if r.cpu_ratio is None else f"{r.cpu_ratio:.3f}"
            print(
                f"    ratios: dispatch p50 {r.latency_ratio:.3f}, throughput {r.throughput_ratio:.3f}, "
                f"server CPU per dispatch {cpu_ratio}; "
                f"webhooks delivered {w.by_end} by the end of the run, {w.total} in all, {w.told_dropped} "
                f"told dropped (numDropped: queue full); /metrics scrape {r.metrics_bytes} bytes"
            )
        cpu_ratios = [ratio for r in observed.rounds if (ratio := r.cpu_ratio) is not None]
        if cpu_ratios:
            print(
                f"  median server CPU per dispatch, observed over plain: {statistics.median(cpu_ratios):.3f}"
            )
    if (dashboard := outcome.dashboard) is not None:
        print()
        rounds = ", ".join(f"{ms:.0f}" for ms in dashboard.latencies_ms)
        print(
            f"dashboard (headless Chromium, logged in) with {dashboard.rooms_live} rooms live: a new room's"
            f" event to the page showing it, p50 {dashboard.p50_ms:.0f} ms (rounds: {rounds} ms; no target)"
        )
    print()
    for check in found:
        print(f"{check['text']}  {verdict(check['pass'])}")
    if outcome.lost_samples:
        print("\nlost dispatches (first few):")
        for sample in outcome.lost_samples:
            print(f"  {sample}")
    if outcome.errors:
        print(f"\nFAILED: {outcome.errors} errors (requests, assignments or connections); samples on stderr")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000, help="workers for latency/throughput (1000)")
    parser.add_argument("--idle-workers", type=int, default=10000, help="workers for the idle phase (10000)")
    parser.add_argument("--dispatches", type=int, default=500, help="sequential dispatches timed (500)")
    parser.add_argument("--duration", type=float, default=30.0, help="throughput phase seconds (30)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent CreateDispatch callers (32)")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=STATUS_INTERVAL,
        help=f"seconds between each worker's update_worker in the busy phases ({STATUS_INTERVAL:g}, as "
        "livekit-agents; 0: only at registration)",
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)} (all)"
    )
    parser.add_argument("--queued", type=int, default=500, help="dispatches queued in the queue phase (500)")
    parser.add_argument(
        "--queue-workers",
        default="1,4",
        help="comma-separated worker counts, one queue drain each (1,4)",
    )
    parser.add_argument(
        "--observed-dispatches", type=int, default=200, help="sequential dispatches per observed run (200)"
    )
    parser.add_argument(
        "--observed-duration", type=float, default=10.0, help="throughput seconds per observed run (10)"
    )
    parser.add_argument(
        "--observed-rounds",
        type=int,
        default=5,
        help="plain and observed runs, this many times, the order alternating; the median round counts (5)",
    )
    parser.add_argument(
        "--dashboard-rooms", type=int, default=100, help="rooms live in the dashboard phase (100)"
    )
    parser.add_argument(
        "--dashboard-rounds", type=int, default=5, help="new rooms timed in the dashboard phase (5)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    try:
        args.queue_workers = [int(count) for count in args.queue_workers.split(",") if count.strip()]
    except ValueError:
        parser.error("--queue-workers: comma-separated whole numbers")
    if not args.queue_workers or min(args.queue_workers) < 1 or args.queued < 1:
        parser.error("--queue-workers and --queued must be positive")
    unknown = [phase for phase in args.phases if phase not in PHASES]
    if unknown or not args.phases:
        choices = ",".join(PHASES)
        parser.error(f"--phases: unknown {', '.join(unknown) or 'empty list'}; choose from {choices}")
    if min(args.workers, args.idle_workers, args.dispatches, args.concurrency) < 1 or args.duration <= 0:
        parser.error("--workers, --idle-workers, --dispatches, --concurrency and --duration must be positive")
    if min(args.observed_dispatches, args.observed_rounds) < 1 or args.observed_duration <= 0:
        parser.error("--observed-dispatches, --observed-rounds and --observed-duration must be positive")
    if args.dashboard_rooms < 0 or args.dashboard_rounds < 1:
        parser.error("--dashboard-rooms must not be negative, --dashboard-rounds must be positive")
    if args.status_interval < 0:
        parser.error("--status-interval must not be negative")
    needed = (args.idle_workers if "idle" in args.phases else args.workers) + FD_HEADROOM
    args.open_files = raise_fd_limit(needed)
    if args.open_files < needed:
        parser.error(
            f"{needed} open files needed but the hard limit allows {args.open_files}; "
            "raise it (ulimit -Hn) or connect fewer workers"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()  # before pinning, so nproc counts the whole machine
    try:
        outcome, setup = run(args)
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:  # no server, or workers refused
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    setup["loop"] = loop_name()
    setup["status"] = (
        f"update_worker every {args.status_interval:g} s per worker in the busy phases"
        if args.status_interval
        else "update_worker only at registration"
    )
    found = checks(outcome)
    if args.json:
        document = {
            "machine": info,
            "setup": setup,
            "phases": {
                name: asdict(result) for name in PHASES if (result := getattr(outcome, name)) is not None
            },
            "checks": [{k: v for k, v in c.items() if k != "text"} for c in found],
            "lost_samples": outcome.lost_samples,
            "errors": outcome.errors,
        }
        print(json.dumps(document, indent=2))
    else:
        print_report(info, setup, outcome, found)
    for sample in outcome.samples:
        print(f"error: {sample}", file=sys.stderr)
    lost = outcome.throughput.lost if outcome.throughput else 0
    return 1 if outcome.errors or lost else 0


if __name__ == "__main__":
    sys.exit(main())
