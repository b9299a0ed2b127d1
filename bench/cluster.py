"""Benchmark dispatch across cluster nodes: switchboard processes sharing one redis-server on this machine.

The workers are bench/dispatch.py's protocol-level clients (they accept every offer at once). Every
dispatch is sent to node B, which owns its room (the room is created there).

Two phases, each checked against a target:

  latency   sequential CreateDispatch → JobAssignment received, with the only worker connected to B (the
            room's node) or to A (another node: the offer, the answer and the assignment each cross
            Redis), in blocks of 25 taken in turn (this machine's other load weighs on both alike).
            Target: cross-node p50 ≤ 2 x same-node p50.
  failover  a worker connected to node C runs a job of a room on B; C is killed (SIGKILL); a standby
            worker is connected to A. Time from the kill to the job's JobAssignment on the standby, over
            --rounds rounds (a fresh node C each). Target: p50 ≤ lease + 1 s.

The nodes are not pinned to CPUs (three processes and Redis share this machine's cores with the client).
The exit code is 1 when a dispatch was lost or a worker saw an error, else 0 (a MISS is not an error).

    .venv/bin/python bench/cluster.py [--dispatches N] [--rounds N] [--lease S] [--json]
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as pb

from common import Server, free_port, machine, own_server, send, verdict
from dispatch import (
    ASSIGN_DEADLINE,
    Board,
    Spread,
    close_workers,
    connect_worker,
    create_call,
    job_update,
    list_call,
    worker_token,
)

WARMUP = 20
BLOCK = 25
BLOCK_WARMUP = 3  # a fresh worker: the owner hears of it with its first dispatch
REDIS_DEADLINE = 10.0
RUNNING_DEADLINE = 10.0
POLL = 0.02
TARGET_CROSS_RATIO = 2.0
TARGET_FAILOVER_MARGIN = 1.0  # seconds over the lease
AGENTS = {"availability_timeout": 5, "reconnect_grace": 5, "restart_backoff": 1}  # the defaults


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Debian's redis-server on a free port, in memory only; its address."""
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
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def node_config(redis: str, lease: float) -> dict[str, Any]:
    return {"redis": {"address": redis}, "cluster": {"lease": lease}, "agents": AGENTS}


@dataclass(frozen=True)
class LatencyResult:
    same_node: Spread
    cross_node: Spread

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
    session: aiohttp.ClientSession, owner: Server, worker_node: Server, count: int, warmup: int
) -> tuple[list[float], int]:
    """Seconds of `count` sequential dispatches to rooms of `owner`, the only worker connected to
    `worker_node`, after `warmup` untimed ones; and the errors seen."""
    board = Board()
    worker = await connect_worker(session, worker_node.url, worker_token(worker_node), board)
    try:
        samples: list[float] = []
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        for index in range(warmup + count):
            room = f"{prefix}-{index}"
            call = create_call(owner, room)
            waiter = board.expect(room)
            started = time.perf_counter()
            status, body = await send(session, call)
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
        await close_workers([worker])


async def latency_phase(
    session: aiohttp.ClientSession, a: Server, b: Server, count: int
) -> tuple[LatencyResult, int]:
    """Same-node and cross-node blocks in turn, so that the machine's other load weighs on both alike."""
    same: list[float] = []
    cross: list[float] = []
    errors = 0
    for block in range(max(1, count // BLOCK)):
        for worker_node, samples in ((b, same), (a, cross)):
            timed, failed = await timed_dispatches(
                session, b, worker_node, BLOCK, WARMUP if block == 0 else 3
            )
            samples += timed
            errors += failed
    return LatencyResult(Spread.of(same), Spread.of(cross)), errors


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
    doomed = await connect_worker(session, doomed_node.url, worker_token(doomed_node), doomed_board)
    spare = None
    try:
        first = doomed_board.expect(room)
        status, body = await send(session, create_call(owner, room))
        if status != 200:
            raise RuntimeError(f"CreateDispatch: HTTP {status} {body[:200]!r}")
        await asyncio.wait_for(first, ASSIGN_DEADLINE)
        job = await job_of(session, owner, room)
        assert job is not None
        await doomed.ws.send_bytes(job_update(job.id, agent.JS_RUNNING))
        # Connected only now, so that the job went to the doomed worker.
        spare = await connect_worker(session, spare_node.url, worker_token(spare_node), spare_board)
        await until_running(session, owner, room)
        again = spare_board.expect(room)
        doomed.closing = True
        assert doomed_node.pid is not None
        killed = time.perf_counter()
        os.kill(doomed_node.pid, signal.SIGKILL)
        return await asyncio.wait_for(again, ASSIGN_DEADLINE + 30) - killed
    finally:
        await close_workers([doomed] + ([spare] if spare is not None else []))


async def run(args: argparse.Namespace) -> tuple[LatencyResult, FailoverResult, int]:
    errors = 0
    with redis_server() as redis, contextlib.ExitStack() as nodes:
        config = node_config(redis, args.lease)
        a = nodes.enter_context(own_server(None, config))
        b = nodes.enter_context(own_server(None, config))
        async with aiohttp.ClientSession() as session:
            latency, errors = await latency_phase(session, a, b, args.dispatches)
            seconds = []
            for _ in range(args.rounds):
                with own_server(None, config) as c:
                    seconds.append(await failover_round(session, b, a, c))
    return latency, FailoverResult(args.lease, seconds), errors


def print_report(latency: LatencyResult, failover: FailoverResult, errors: int) -> None:
    info = machine()
    print(f"bench/cluster.py on {info['cpu_model']} ({info['nproc']} CPUs), {info['python']}")
    print("CreateDispatch → JobAssignment, rooms on node B, sequential:")
    for name, spread in (("worker on B (same node)", latency.same_node), ("worker on A", latency.cross_node)):
        print(f"  {name:<26} p50 {spread.p50_ms:6.2f} ms  p99 {spread.p99_ms:6.2f} ms  ({spread.samples})")
    ok = latency.ratio <= TARGET_CROSS_RATIO
    print(f"  cross/same p50 {latency.ratio:.2f}x (target ≤ {TARGET_CROSS_RATIO:g}x)  {verdict(ok)}")
    target = failover.lease + TARGET_FAILOVER_MARGIN
    samples = ", ".join(f"{s:.2f}" for s in sorted(failover.seconds))
    print(f"kill -9 of the worker's node → its job assigned on another node (lease {failover.lease:g} s):")
    print(
        f"  p50 {failover.p50:.2f} s (target ≤ {target:g} s)  {verdict(failover.p50 <= target)}  [{samples}]"
    )
    print(f"errors: {errors}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--dispatches", type=int, default=200, help="sequential dispatches timed, per placement (200)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="node kills timed (5)")
    parser.add_argument("--lease", type=float, default=1.5, help="cluster.lease of the nodes, s (1.5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    latency, failover, errors = asyncio.run(run(args))
    if args.json:
        figures = {"latency": asdict(latency), "failover": asdict(failover), "errors": errors}
        figures["latency"]["ratio"], figures["failover"]["p50"] = latency.ratio, failover.p50
        print(json.dumps(figures, indent=2))
    else:
        print_report(latency, failover, errors)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
