"""Benchmark Switchboard nodes sharing one redis-server on this machine: dispatch and audio across nodes.

The workers are bench/dispatch.py's protocol-level clients (they accept every offer at once), and the timed
CreateDispatch calls go over keep-alive connections of the same kind (bench/wire.py), on uvloop. The load
generator shares this machine's cores with the nodes, so what it spends is taken from them: the throughput
phase therefore runs bench/loadgen.c by default, a C client doing the same on the same wire (its requests
and worker messages made here, by the same code), built with the machine's C compiler (--client python
keeps the Python client). The media clients are the official Python `livekit` rtc SDK, as in bench/rtc.py.
Every node is a separate `switchboard serve` process with the same API key and secret, and a fresh
redis-server (in memory only) is started for each cluster.

Four phases (--phases), each checked against a target:

  latency     sequential CreateDispatch → JobAssignment, every dispatch sent to node B, which owns its room
              (A and C are drained, so the cluster places every room on B), with the only worker
              connected to B (the room's node) or to A (another node: the offer, the answer and the
              assignment each cross Redis), in blocks of 25 taken in turn (this machine's other load
              weighs on both alike).
              Target: cross-node p50 ≤ 2 x same-node p50.
  failover    a worker connected to node C runs a job of a room on B; C is killed (SIGKILL); a standby
              worker is connected to A. Time from the kill to the job's JobAssignment on the standby, over
              --rounds rounds (a fresh node C each). Target: p50 ≤ lease + 1 s.
  throughput  sustained dispatches/s on one node, then on two, --rounds times (the order alternating
              from round to round): callers (--concurrency, shared among the nodes) send CreateDispatch
              to every node at once, each to a fresh room, placed by the cluster; --workers are spread
              over the nodes and each room's node chooses among all of them. By default the load
              generator is bench/loadgen.c (--client). Every dispatch is counted to its JobAssignment;
              lost = created - assigned. Target: two nodes ≥ 1.6 x one node (the median of the rounds'
              ratios), 0 lost.
  audio       N rooms, each with a publisher (a continuous tone) and a subscriber, on one node, then on
              two (the publisher joins through node i mod 2 and the subscriber through the other, so
              placement and the signalling relay both work); N grows by --step until a subscriber sees
              gaps (bench/rtc.py's criteria), this process uses 90 % of a core (every SDK client runs
              here: beyond that it measures the client) or --max-rooms. Figure: the largest N without
              loss, one node against two (no target set by the issue).

Nothing is pinned: the nodes, Redis and the load generator (this process, every SDK client included, and
bench/loadgen.c) share this machine's cores, and the report says how much CPU each used.
The exit code is 1 when a dispatch was lost or a worker saw an error, else 0 (a MISS is not an error).

    .venv/bin/python bench/cluster.py [--phases latency,failover,throughput,audio] [--dispatches N]
                                      [--rounds N] [--duration S] [--workers N] [--max-rooms N]
                                      [--client native|python] [--json]
"""

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as pb

import native
from common import (
    BUSY_CPU,
    Server,
    free_port,
    machine,
    machine_busy_seconds,
    new_secret,
    own_server,
    percent,
    process_cpu_seconds,
    raise_fd_limit,
    send,
    twirp_call,
    verdict,
)
from dispatch import (
    ASSIGN_DEADLINE,
    DRAIN_DEADLINE,
    FD_HEADROOM,
    PREMINT_RATE,
    STATUS_INTERVAL,
    BenchWorker,
    Board,
    CallLog,
    Cpu,
    Spread,
    ThroughputResult,
    close_workers,
    connect_worker,
    connect_workers,
    create_call,
    job_update,
    list_call,
    report_status,
    run_async,
    throughput_outcome,
    throughput_phase,
    worker_token,
)
from rtc import Client, Env, Tone, delivery, has_gaps, join, received, wait_for
from switchboard.api import switchboard_proto as switchboard_pb
from wire import TwirpCaller

PHASES = ("latency", "failover", "throughput", "audio")
WARMUP = 20
BLOCK = 25
BLOCK_WARMUP = 3  # a fresh worker: the owner hears of it with its first dispatch
REDIS_DEADLINE = 10.0
RUNNING_DEADLINE = 10.0
POLL = 0.02
TARGET_CROSS_RATIO = 2.0
TARGET_FAILOVER_MARGIN = 1.0  # seconds over the lease
TARGET_SCALING = 1.6  # two nodes against one, on two cores
AGENTS = {"availability_timeout": 5, "reconnect_grace": 5, "restart_backoff": 1}  # the defaults
MEDIA = {"rtc": {"ice_addresses": ["127.0.0.1"]}}  # media on loopback, as bench/rtc.py
HEARD_DEADLINE = 10.0  # a new room's subscriber hears its publisher within this
SETTLE = 1.0  # seconds after the last room starts before a window (negotiation, jitter buffers)
TOP_COMMANDS = 6
NODE_SERVICE = "/twirp/switchboard.NodeService"


@dataclass(frozen=True)
class RedisProcess:
    address: str
    pid: int


@contextlib.contextmanager
def redis_server() -> Iterator[RedisProcess]:
    """Debian's redis-server on a free port, in memory only."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-redis-") as directory:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + REDIS_DEADLINE
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield RedisProcess(f"127.0.0.1:{port}", process.pid)
        finally:
            process.terminate()
            process.wait(timeout=10)


def node_config(redis: RedisProcess, lease: float) -> dict[str, Any]:
    return {"redis": {"address": redis.address}, "cluster": {"lease": lease}, "agents": AGENTS, **MEDIA}


@contextlib.contextmanager
def cluster(count: int, lease: float) -> Iterator[tuple[RedisProcess, list[Server]]]:
    """A fresh redis-server and `count` nodes on it, sharing one API secret (a call or a join may be
    forwarded to another node, which checks the token again)."""
    with redis_server() as redis, contextlib.ExitStack() as stack:
        secret = new_secret()
        config = node_config(redis, lease)
        yield redis, [stack.enter_context(own_server(None, config, secret)) for _ in range(count)]


class Meter:
    """CPU used since it was made, in fractions of one core: each node, Redis, the load generator (this
    process, its SDK threads, and bench/loadgen.c when it runs), and everything else on the machine."""

    def __init__(self, nodes: Sequence[Server], redis: RedisProcess, generator: int | None = None) -> None:
        self.pids = [node.pid for node in nodes if node.pid is not None] + [redis.pid]
        self.generator = generator
        self.started = time.monotonic()
        self.before = self.reading()

    def reading(self) -> tuple[list[float], float, float | None]:
        client = time.process_time() + (process_cpu_seconds(self.generator) if self.generator else 0.0)
        return [process_cpu_seconds(pid) for pid in self.pids], client, machine_busy_seconds()

    def usage(self) -> "Usage":
        seconds = time.monotonic() - self.started
        (processes, client, busy), (processes0, client0, busy0) = self.reading(), self.before
        used = [(after - before) / seconds for after, before in zip(processes, processes0, strict=True)]
        client_share = (client - client0) / seconds
        other = None
        if busy is not None and busy0 is not None:
            other = max(0.0, (busy - busy0) / seconds - client_share - sum(used))
        return Usage(nodes=used[:-1], redis=used[-1], client=client_share, other=other)


@dataclass(frozen=True)
class Usage:
    nodes: list[float]
    redis: float
    client: float
    other: float | None

    def text(self) -> str:
        nodes = " + ".join(percent(share) for share in self.nodes)
        return (
            f"CPU: node{'s' if len(self.nodes) > 1 else ''} {nodes}, Redis {percent(self.redis)}, "
            f"this client {percent(self.client)}, other processes {percent(self.other)} (of one core)"
        )


@contextlib.asynccontextmanager
async def redis_client(redis: RedisProcess) -> AsyncIterator[Any]:
    host, port = redis.address.rsplit(":", 1)
    client = aioredis.Redis(host=host, port=int(port), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def redis_facts(redis: RedisProcess) -> tuple[Counter[str], dict[str, int]]:
    """Calls of each Redis command so far, and the rooms placed on each node (`{sb}:node_rooms`)."""
    async with redis_client(redis) as client:
        stats = await client.info("commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
        rooms = {str(node): int(count) for node, count in (await client.hgetall("{sb}:node_rooms")).items()}
    return calls, rooms


async def assigned_across(redis: RedisProcess, board: Board, worker_urls: dict[str, str]) -> float | None:
    """The share of assigned jobs whose worker is connected to another node than the room's (each such
    job's offer, answer, assignment and two status updates cross Redis Streams), from the rooms' owners
    in `{sb}:room:<name>` and the nodes' URLs in `{sb}:node:<id>`."""
    rooms = list(board.assigned_worker)
    async with redis_client(redis) as client:
        ids = sorted(await client.smembers("{sb}:nodes"))
        infos = await client.mget([f"{{sb}}:node:{node_id}" for node_id in ids]) if ids else []
        urls = {node_id: json.loads(info)["url"] for node_id, info in zip(ids, infos, strict=True) if info}
        owners = await client.mget([f"{{sb}}:room:{room}" for room in rooms]) if rooms else []
    known = [
        (urls[owner], worker_urls.get(board.assigned_worker[room]))
        for room, owner in zip(rooms, owners, strict=True)
        if owner in urls
    ]
    return sum(owner != worker for owner, worker in known) / len(known) if known else None


@dataclass(frozen=True)
class LatencyResult:
    same_node: Spread
    cross_node: Spread
    rooms_per_node: list[int]  # where placement put the rooms (`{sb}:node_rooms`): all on B

    @property
    def ratio(self) -> float:
        return self.cross_node.p50_ms / self.same_node.p50_ms


@dataclass(frozen=True)
class FailoverResult:
    lease: float
    seconds: list[float]

    @property
    def p50(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[len(ordered) // 2] if ordered else float("nan")


async def timed_dispatches(
    owner: Server, worker_node: Server, count: int, warmup: int
) -> tuple[list[float], int]:
    """Seconds of `count` sequential dispatches to rooms of `owner`, the only worker connected to
    `worker_node`, after `warmup` untimed ones; and the errors seen."""
    board = Board()
    worker = await connect_worker(worker_node.url, worker_token(worker_node), board)
    caller = TwirpCaller(owner.url)
    try:
        samples: list[float] = []
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        for index in range(warmup + count):
            room = f"{prefix}-{index}"
            call = create_call(owner, room)
            waiter = board.expect(room)
            started = time.perf_counter()
            status, body = await caller.send(call)
            if status != 200:
                board.fail(f"CreateDispatch {room}: HTTP {status} {body[:200]!r}")
                continue
            try:
                assigned = await asyncio.wait_for(waiter, ASSIGN_DEADLINE)
            except TimeoutError:
                board.fail(f"room {room}: no JobAssignment within {ASSIGN_DEADLINE:g}s")
                continue
            if index >= warmup:
                samples.append(assigned - started)
        return samples, board.errors
    finally:
        caller.close()
        await close_workers([worker])


async def latency_phase(a: Server, b: Server, count: int) -> tuple[LatencyResult, int]:
    """Same-node and cross-node blocks in turn, so that the machine's other load weighs on both alike."""
    same: list[float] = []
    cross: list[float] = []
    errors = 0
    for block in range(max(1, count // BLOCK)):
        for worker_node, samples in ((b, same), (a, cross)):
            timed, failed = await timed_dispatches(b, worker_node, BLOCK, WARMUP if block == 0 else 3)
            samples += timed
            errors += failed
    return LatencyResult(Spread.of(same), Spread.of(cross), []), errors


async def job_of(session: aiohttp.ClientSession, owner: Server, room: str) -> agent.Job | None:
    status, body = await send(session, list_call(owner, room))
    if status != 200:
        return None
    dispatches = pb.ListAgentDispatchResponse.FromString(body).agent_dispatches
    jobs = [job for dispatch in dispatches if dispatch.agent_name for job in dispatch.state.jobs]
    return jobs[-1] if jobs else None


async def until_running(session: aiohttp.ClientSession, owner: Server, room: str) -> None:
    deadline = time.monotonic() + RUNNING_DEADLINE
    while time.monotonic() < deadline:
        job = await job_of(session, owner, room)
        if job is not None and job.state.status == agent.JS_RUNNING:
            return
        await asyncio.sleep(POLL)
    raise RuntimeError(f"room {room}: the job did not run within {RUNNING_DEADLINE:g}s")


async def failover_round(
    session: aiohttp.ClientSession, owner: Server, spare_node: Server, doomed_node: Server
) -> float:
    """Seconds from the kill of `doomed_node`, whose worker runs a job of `owner`, to that job's
    assignment to a worker of `spare_node`."""
    doomed_board, spare_board = Board(complete_jobs=False), Board(complete_jobs=False)
    room = f"bench-{uuid.uuid4().hex[:8]}-failover"
    doomed = await connect_worker(doomed_node.url, worker_token(doomed_node), doomed_board)
    spare = None
    try:
        first = doomed_board.expect(room)
        status, body = await send(session, create_call(owner, room))
        if status != 200:
            raise RuntimeError(f"CreateDispatch: HTTP {status} {body[:200]!r}")
        await asyncio.wait_for(first, ASSIGN_DEADLINE)
        job = await job_of(session, owner, room)
        assert job is not None
        doomed.socket.send(job_update(job.id, agent.JS_RUNNING))
        # Connected only now, so that the job went to the doomed worker.
        spare = await connect_worker(spare_node.url, worker_token(spare_node), spare_board)
        await until_running(session, owner, room)
        again = spare_board.expect(room)
        doomed.socket.closing = True  # its connection is about to drop
        assert doomed_node.pid is not None
        killed = time.perf_counter()
        os.kill(doomed_node.pid, signal.SIGKILL)
        return await asyncio.wait_for(again, ASSIGN_DEADLINE + 30) - killed
    finally:
        await close_workers([doomed] + ([spare] if spare is not None else []))


# ---------------------------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class ThroughputRun:
    nodes: int
    per_node: list[ThroughputResult]  # bench/dispatch.py's throughput phase against each node, at once
    rooms_per_node: list[int]  # where placement put the rooms (`{sb}:node_rooms` after the run)
    assigned_across: float | None  # the share of jobs assigned to a worker on another node than the room's
    redis_calls: dict[str, float]  # the commands Redis served most, per dispatch created
    usage: Usage  # over the timed span
    lost_samples: list[str]

    @property
    def created(self) -> int:
        return sum(result.created for result in self.per_node)

    @property
    def assigned(self) -> int:
        return sum(result.assigned for result in self.per_node)

    @property
    def lost(self) -> int:
        return self.created - self.assigned

    @property
    def assigned_rate(self) -> float:
        """The nodes' rates summed (each: its callers' assignments / time to the last one)."""
        return sum(result.assigned_rate for result in self.per_node)

    @property
    def node_cpu_ms(self) -> float:
        """CPU time of all the nodes per assigned dispatch, in ms: what one dispatch costs the cluster."""
        return sum(self.usage.nodes) / self.assigned_rate * 1000 if self.assigned_rate else float("nan")


async def cpu_over(
    nodes: Sequence[Server], redis: RedisProcess, seconds: float, generator: int | None = None
) -> Usage:
    meter = Meter(nodes, redis, generator)
    await asyncio.sleep(seconds)
    return meter.usage()


def worker_shares(workers: int, nodes: int) -> list[int]:
    """How many of the workers connect to each node: as even as can be, the first nodes taking the rest."""
    return [workers // nodes + (index < workers % nodes) for index in range(nodes)]


async def throughput_run(count: int, args: argparse.Namespace) -> tuple[ThroughputRun, int]:
    """bench/dispatch.py's throughput phase against each of `count` nodes at once, sharing the workers
    (spread over the nodes) and their board; and the errors the workers saw."""
    board = Board()
    per_node = max(1, args.concurrency // count)
    with cluster(count, args.lease) as (redis, nodes):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=per_node * count)) as twirp:
            workers: list[BenchWorker] = []
            worker_urls: dict[str, str] = {}
            for node, share in zip(nodes, worker_shares(args.workers, count), strict=True):
                connected = await connect_workers(node, share, board)
                workers += connected
                worker_urls.update({worker.worker_id: node.url for worker in connected})
            pump = asyncio.create_task(report_status(workers, STATUS_INTERVAL))
            try:
                calls_before, _ = await redis_facts(redis)
                # The timed span is the callers' (--duration); the phases then wait for what is still
                # outstanding and ask ListDispatch about any dispatch no worker saw. They share one board:
                # that wait may then run to its deadline (each phase sets the board's awaited rooms).
                meter = asyncio.create_task(cpu_over(nodes, redis, args.duration))
                results = await asyncio.gather(
                    *(
                        throughput_phase(twirp, node, workers, board, args.duration, per_node)
                        for node in nodes
                    )
                )
                usage = await meter
                calls_after, rooms = await redis_facts(redis)
                across = await assigned_across(redis, board, worker_urls)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                if board.lost_connections:
                    board.fail(f"{board.lost_connections} workers lost their connection during the run")
                await close_workers(workers)
    return throughput_figures(results, calls_after - calls_before, rooms, across, usage), board.errors


def throughput_figures(
    results: Sequence[tuple[ThroughputResult, list[str]]],
    calls: Counter[str],
    rooms: dict[str, int],
    across: float | None,
    usage: Usage,
) -> ThroughputRun:
    created = sum(result.created for result, _ in results)
    return ThroughputRun(
        nodes=len(results),
        per_node=[result for result, _ in results],
        rooms_per_node=sorted(rooms.values(), reverse=True),
        assigned_across=across,
        redis_calls={name: n / max(1, created) for name, n in calls.most_common(TOP_COMMANDS)},
        usage=usage,
        lost_samples=[sample for _, samples in results for sample in samples],
    )


async def native_throughput_run(
    count: int, args: argparse.Namespace, binary: Path
) -> tuple[ThroughputRun, int]:
    """The same run, driven by bench/loadgen.c: its callers and workers, spread over the nodes as the Python
    client's are, and what it saw checked here as the Python client's is (ListDispatch for every created
    dispatch no worker was assigned)."""
    board = Board()
    per_node = max(1, args.concurrency // count)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-tput"
    with cluster(count, args.lease) as (redis, nodes), tempfile.TemporaryDirectory() as directory:
        ahead = math.ceil(args.duration * PREMINT_RATE)
        calls = [
            (index, room, create_call(node, room))
            for index, node in enumerate(nodes)
            for room in (f"{prefix}-{index}-{i}" for i in range(ahead))
        ]
        shares = worker_shares(args.workers, count)
        worker_nodes = [index for index, share in enumerate(shares) for _ in range(share)]
        plan = native.Plan(
            nodes, args.duration, DRAIN_DEADLINE, per_node, STATUS_INTERVAL, worker_nodes, calls
        )
        native.write_plan(plan, Path(directory) / "plan")
        generator = await native.LoadGenerator.start(binary, Path(directory) / "plan")
        try:
            calls_before, _ = await redis_facts(redis)
            meter = asyncio.create_task(cpu_over(nodes, redis, args.duration, generator.pid))
            await generator.go()
            usage = await meter
            report = await generator.report()
            calls_after, rooms = await redis_facts(redis)
            logs = [CallLog(report.started, report.stopped - report.started) for _ in nodes]
            for index, (node, room, _) in enumerate(calls):
                if index not in report.replies:
                    continue
                log = logs[node]
                sent, answered, status, dispatch_id = report.replies[index]
                log.sent[room] = sent
                if answered:
                    log.replies.append(answered - sent)
                if status == 200:
                    log.created[room] = dispatch_id
                else:
                    log.http_errors += 1  # loadgen.c reported each one among its errors
            for room, dispatch_id, at, worker in report.assignments:
                board.assigned_worker[room] = str(worker)
                board.assignment(room, dispatch_id, at)
            board.errors += report.errors
            board.samples += report.samples
            board.terminations += report.terminations
            if report.lost_connections:
                board.fail(
                    f"{report.lost_connections} connections of bench/loadgen.c were lost during the run"
                )
            if report.ran_out:
                board.fail(f"{report.ran_out} callers ran out of the {ahead} calls made ahead for each node")
            worker_urls = {str(worker): nodes[node].url for worker, node in enumerate(worker_nodes)}
            across = await assigned_across(redis, board, worker_urls)
            cpu = Cpu(None, usage.client, usage.other)
            async with aiohttp.ClientSession() as session:
                results = [
                    await throughput_outcome(session, node, board, log, args.workers, per_node, cpu, 0, 0)
                    for node, log in zip(nodes, logs, strict=True)
                ]
            await generator.finish()
        finally:
            generator.kill()
    return throughput_figures(results, calls_after - calls_before, rooms, across, usage), board.errors


# ---------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioStep:
    rooms: int
    delivery: dict[str, Any]  # bench/rtc.py's: packets, frames, audible and concealed shares, lost
    gaps: bool
    late_frames: int  # tone frames this process handed to the SDK more than a frame late
    usage: Usage


@dataclass(frozen=True)
class AudioRun:
    nodes: int
    seconds: float
    steps: list[AudioStep]
    rooms_per_node: list[int]
    stopped_by: str

    @property
    def clean_rooms(self) -> int:
        """The largest number of rooms relayed without loss: those below the first step that saw gaps."""
        clean = 0
        for step in self.steps:
            if step.gaps:
                break
            clean = step.rooms
        return clean


async def audio_run(count: int, args: argparse.Namespace) -> AudioRun:
    """Rooms of one publisher and one subscriber, added --step at a time on `count` nodes, each step
    measured for --window seconds, until a subscriber sees gaps or --max-rooms."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with cluster(count, args.lease) as (redis, nodes):
        envs = [Env(node, node.url.replace("http://", "ws://", 1), prefix) for node in nodes]
        tone = Tone()  # one source feeds every publisher's track: each one still encodes and sends its own
        tone.start()
        clients: list[Client] = []
        subscribers: list[Client] = []
        steps: list[AudioStep] = []
        stopped_by = f"the bound of {args.max_rooms} rooms"
        try:
            while len(subscribers) < args.max_rooms:
                for _ in range(min(args.step, args.max_rooms - len(subscribers))):
                    room = f"audio-{len(subscribers)}"
                    # Publisher and subscriber reach different nodes: one of them is relayed to the room's.
                    publisher = await join(envs[len(subscribers) % count], room, "publisher", subscribe=False)
                    clients.append(publisher)
                    subscriber = await join(
                        envs[(len(subscribers) + 1) % count], room, "subscriber", subscribe=True, ear=True
                    )
                    clients.append(subscriber)
                    subscribers.append(subscriber)
                    sid = (await tone.publish(publisher)).sid
                    await wait_for(
                        lambda: subscriber.loud.get(sid, 0) >= 5,  # noqa: B023
                        f"the subscriber of {room} to hear its publisher",
                        HEARD_DEADLINE,
                    )
                await asyncio.sleep(SETTLE)
                before, late_before, sent_before = await received(subscribers), tone.late, tone.frames
                meter = Meter(nodes, redis)
                await asyncio.sleep(args.window)
                usage = meter.usage()
                got, sent = (await received(subscribers)).minus(before), tone.frames - sent_before
                row = delivery(got, len(subscribers), args.window, sent)
                steps.append(AudioStep(len(subscribers), row, has_gaps(row), tone.late - late_before, usage))
                if steps[-1].gaps:
                    stopped_by = "a subscriber saw gaps"
                    break
                if (
                    usage.client >= BUSY_CPU
                ):  # as bench/rtc.py's capacity phase: more would measure the client
                    stopped_by = f"this client using {percent(usage.client)} of a core (client-bound)"
                    break
            _, rooms = await redis_facts(redis)
        finally:
            await tone.stop()
            for client in clients:
                await client.close()
    return AudioRun(count, args.window, steps, sorted(rooms.values(), reverse=True), stopped_by)


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Outcome:
    latency: LatencyResult | None = None
    failover: FailoverResult | None = None
    throughput: list[tuple[ThroughputRun, ThroughputRun]] | None = None
    """Rounds of one node and two."""
    audio: list[AudioRun] | None = None
    errors: int = 0


async def drain(session: aiohttp.ClientSession, node: Server) -> None:
    """switchboard.NodeService/DrainNode on `node`: the cluster places no new room there (its workers
    still take jobs), so that the rooms of the dispatch phases are all placed on the one node left."""
    call = twirp_call(node, "DrainNode", switchboard_pb.DrainNodeRequest(), "", NODE_SERVICE)
    status, body = await send(session, call)
    if status != 200:
        raise RuntimeError(f"DrainNode: HTTP {status} {body[:200]!r}")


async def dispatch_phases(args: argparse.Namespace, outcome: Outcome) -> None:
    with cluster(2, args.lease) as (redis, (a, b)):
        config = node_config(redis, args.lease)
        async with aiohttp.ClientSession() as session:
            await drain(session, a)
            if "latency" in args.phases:
                latency, errors = await latency_phase(a, b, args.dispatches)
                _, rooms = await redis_facts(redis)
                outcome.latency = replace(latency, rooms_per_node=sorted(rooms.values(), reverse=True))
                outcome.errors += errors
            if "failover" in args.phases:
                seconds = []
                for _ in range(args.rounds):
                    with own_server(None, config, b.api_secret) as c:
                        await drain(session, c)
                        seconds.append(await failover_round(session, b, a, c))
                outcome.failover = FailoverResult(args.lease, seconds)


async def run(args: argparse.Namespace) -> Outcome:
    outcome = Outcome()
    if {"latency", "failover"} & set(args.phases):
        await dispatch_phases(args, outcome)
    if "throughput" in args.phases:
        outcome.throughput = []
        with tempfile.TemporaryDirectory(prefix="switchboard-loadgen-") as directory:
            binary = native.build(Path(directory)) if args.client == "native" else None
            for round_ in range(args.rounds):
                runs = {}
                # One node first, then two, then the other way round: a drift of the machine weighs on both.
                for count in (1, 2) if round_ % 2 == 0 else (2, 1):
                    if binary is None:
                        runs[count], errors = await throughput_run(count, args)
                    else:
                        runs[count], errors = await native_throughput_run(count, args, binary)
                    outcome.errors += errors
                outcome.throughput.append((runs[1], runs[2]))
    if "audio" in args.phases:
        outcome.audio = [await audio_run(count, args) for count in (1, 2)]
    return outcome


# ---------------------------------------------------------------------------------------------- report


def scaling(runs: tuple[ThroughputRun, ThroughputRun]) -> float:
    one, two = runs
    return two.assigned_rate / one.assigned_rate if one.assigned_rate else float("nan")


def median_scaling(rounds: Sequence[tuple[ThroughputRun, ThroughputRun]]) -> float:
    return statistics.median(scaling(runs) for runs in rounds)


def print_throughput(rounds: Sequence[tuple[ThroughputRun, ThroughputRun]]) -> None:
    seconds = rounds[0][0].per_node[0].seconds
    print(f"sustained CreateDispatch → JobAssignment, {seconds:.0f} s, fresh rooms placed by the cluster:")
    for index, runs in enumerate(rounds):
        print(f"  round {index + 1}: two nodes / one node {scaling(runs):.2f}x")
        print_runs(runs)
    ratio = median_scaling(rounds)
    lost = sum(r.lost for runs in rounds for r in runs)
    ratios = ", ".join(f"{scaling(runs):.2f}x" for runs in rounds)
    print(
        f"  two nodes / one node {ratios}: median {ratio:.2f}x (target ≥ {TARGET_SCALING:g}x)"
        f"  {verdict(ratio >= TARGET_SCALING)};  lost {lost} (target 0)  {verdict(lost == 0)}"
    )
    for sample in [sample for runs in rounds for r in runs for sample in r.lost_samples]:
        print(f"    lost: {sample}")


def print_runs(runs: Sequence[ThroughputRun]) -> None:
    for r in runs:
        rooms = "/".join(str(n) for n in r.rooms_per_node)
        print(
            f"  {r.nodes} node{'s' if r.nodes > 1 else ' '}  {r.assigned_rate:7.0f} assigned/s"
            f"  created {r.created}  assigned {r.assigned}  lost {r.lost}  (failed with a reason"
            f" {sum(p.failed_with_reason for p in r.per_node)}, HTTP errors"
            f" {sum(p.http_errors for p in r.per_node)}); {r.per_node[0].workers} workers,"
            f" {sum(p.concurrency for p in r.per_node)} callers; rooms per node {rooms}"
        )
        replies = ", ".join(f"{p.reply.p50_ms:.1f}/{p.reply.p99_ms:.1f}" for p in r.per_node)
        dispatches = ", ".join(f"{p.dispatch.p50_ms:.1f}/{p.dispatch.p99_ms:.1f}" for p in r.per_node)
        print(
            f"           CreateDispatch reply p50/p99 ms per node called: {replies};"
            f" to JobAssignment: {dispatches}"
        )
        print(
            f"           jobs assigned to a worker on another node than the room's:"
            f" {percent(r.assigned_across)}"
        )
        print(f"           {r.usage.text()}; nodes' CPU per dispatch {r.node_cpu_ms:.2f} ms")
        commands = ", ".join(f"{name} {n:.2f}" for name, n in r.redis_calls.items())
        print(f"           Redis commands per dispatch (whole run, inside Lua scripts too): {commands}")


def print_audio(runs: Sequence[AudioRun]) -> None:
    print(
        f"audio rooms (1 publisher + 1 subscriber each) relayed without loss, {runs[0].seconds:g} s per step:"
    )
    for r in runs:
        print(
            f"  {r.nodes} node{'s' if r.nodes > 1 else ''}: stopped by {r.stopped_by}; rooms per node "
            f"{'/'.join(str(n) for n in r.rooms_per_node)}"
        )
        for step in r.steps:
            d = step.delivery
            shares = "  ".join(
                f"{key} {percent(d[key])}" for key in ("packets", "frames", "audible", "concealed")
            )
            print(
                f"    {step.rooms:3d} rooms  {shares}  lost {d['lost']}  late {step.late_frames}"
                f"  {'GAPS' if step.gaps else 'clean'}  {step.usage.text()}"
            )
    one, two = runs
    print(
        f"  largest N without loss: one node {one.clean_rooms}, two nodes {two.clean_rooms}"
        " (no target; stopped by the client or the bound, it is a lower bound)"
    )


def print_report(outcome: Outcome) -> None:
    info = machine()
    print(f"bench/cluster.py on {info['cpu_model']} ({info['nproc']} CPUs), {info['python']}; nothing pinned")
    latency, failover = outcome.latency, outcome.failover
    if latency is not None:
        rooms = "/".join(str(n) for n in latency.rooms_per_node)
        print(f"CreateDispatch → JobAssignment, rooms on node B (rooms per node: {rooms}), sequential:")
        for name, spread in (
            ("worker on B (same node)", latency.same_node),
            ("worker on A", latency.cross_node),
        ):
            print(
                f"  {name:<26} p50 {spread.p50_ms:6.2f} ms  p99 {spread.p99_ms:6.2f} ms  ({spread.samples})"
            )
        ok = latency.ratio <= TARGET_CROSS_RATIO
        print(f"  cross/same p50 {latency.ratio:.2f}x (target ≤ {TARGET_CROSS_RATIO:g}x)  {verdict(ok)}")
    if failover is not None:
        target = failover.lease + TARGET_FAILOVER_MARGIN
        samples = ", ".join(f"{s:.2f}" for s in sorted(failover.seconds))
        print(
            f"kill -9 of the worker's node → its job assigned on another node (lease {failover.lease:g} s):"
        )
        print(
            f"  p50 {failover.p50:.2f} s (target ≤ {target:g} s)  {verdict(failover.p50 <= target)}"
            f"  [{samples}]"
        )
    if outcome.throughput is not None:
        print_throughput(outcome.throughput)
    if outcome.audio is not None:
        print_audio(outcome.audio)
    print(f"errors: {outcome.errors}")


def run_figures(r: ThroughputRun) -> dict[str, Any]:
    return {**asdict(r), "lost": r.lost, "assigned_rate": r.assigned_rate, "node_cpu_ms": r.node_cpu_ms}


def figures(outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "errors": outcome.errors}
    if outcome.latency is not None:
        result["latency"] = {**asdict(outcome.latency), "ratio": outcome.latency.ratio}
    if outcome.failover is not None:
        result["failover"] = {**asdict(outcome.failover), "p50": outcome.failover.p50}
    if outcome.throughput is not None:
        rounds = [
            {"scaling": scaling(runs), "runs": [run_figures(r) for r in runs]} for runs in outcome.throughput
        ]
        result["throughput"] = {"rounds": rounds, "scaling": median_scaling(outcome.throughput)}
    if outcome.audio is not None:
        result["audio"] = [{**asdict(r), "clean_rooms": r.clean_rooms} for r in outcome.audio]
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)} (all)"
    )
    parser.add_argument(
        "--dispatches", type=int, default=200, help="sequential dispatches timed, per placement (200)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="node kills timed; throughput rounds of one node and two (5)"
    )
    parser.add_argument("--lease", type=float, default=1.5, help="cluster.lease of the nodes, s (1.5)")
    parser.add_argument("--duration", type=float, default=10.0, help="throughput seconds per run (10)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent CreateDispatch callers (32)")
    parser.add_argument("--workers", type=int, default=100, help="workers of the throughput phase (100)")
    parser.add_argument(
        "--client",
        choices=("native", "python"),
        default="native" if native.compiler() else "python",
        help="the throughput phase's load generator: bench/loadgen.c, built with cc (the default when"
        " there is one), or the Python client of bench/dispatch.py",
    )
    parser.add_argument("--max-rooms", type=int, default=40, help="bound of the audio phase (40)")
    parser.add_argument("--step", type=int, default=4, help="audio rooms added per step (4)")
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured per audio step (3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown or not phases:
        parser.error(f"--phases takes some of {','.join(PHASES)}")
    args.phases = [phase for phase in PHASES if phase in phases]
    counts = (args.dispatches, args.rounds, args.concurrency, args.workers, args.max_rooms, args.step)
    if min(counts) < 1 or min(args.lease, args.duration, args.window) <= 0:
        parser.error("counts, --lease, --duration and --window must be positive")
    raise_fd_limit(args.workers + FD_HEADROOM)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The SDK logs each /rtc/v1 404 (it then falls back to /rtc, as intended) and teardown chatter.
    logging.getLogger("livekit").setLevel(logging.ERROR)
    outcome = run_async(run(args))
    if args.json:
        print(json.dumps(figures(outcome), indent=2))
    else:
        print_report(outcome)
    lost = sum(r.lost for runs in outcome.throughput or [] for r in runs)
    return 1 if outcome.errors or lost else 0


if __name__ == "__main__":
    sys.exit(main())
